"""keras_beit reproduces transformers' BEiT numbers (fp32, max abs error 1e-4).

Each case saves a tiny transformers model with every parameter randomised, loads
the directory with `from_preset`, and compares against the in-memory model at
the checkpoint resolution and at a second, non-square one (1.5x / 1.25x)
where the position tables are resized.
"""

import keras
import numpy as np
import pytest
import torch
import transformers

import keras_beit
from transformers_reference import randomize
from transformers_reference import run
from transformers_reference import save_model
from transformers_reference import to_torch

ATOL = 1e-4
SECOND_SIZE = (48, 40)  # 6 x 5 patches for the 4 x 4 checkpoint grid

CONFIGS = {
    "per_layer_bias": dict(use_relative_position_bias=True),
    "shared_bias": dict(use_shared_relative_position_bias=True, use_mask_token=True),
    "shared_and_per_layer_bias": dict(
        use_relative_position_bias=True, use_shared_relative_position_bias=True, use_mask_token=True
    ),
    "absolute_positions_dit": dict(use_absolute_position_embeddings=True, use_mask_token=True),
    "no_layer_scale": dict(use_relative_position_bias=True, layer_scale_init_value=0.0),
    "cls_pooling": dict(use_relative_position_bias=True, use_mean_pooling=False),
    # transformers' own BeitModelTester configuration: no position information at all.
    "transformers_tester": dict(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=37,
    ),
}


def _images(config, size=None, batch=2, seed=0):
    side = config.get("image_size", 32)
    height, width = size or (side, side)
    return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype("float32")


def _second_size(config):
    side, patch = config.get("image_size", 32), config.get("patch_size", 8)
    if patch == 2:
        return (44, 36)
    return SECOND_SIZE if side == 32 else (side * 3 // 2, side * 5 // 4)


def _max_error(actual, expected):
    actual = keras.ops.convert_to_numpy(actual)
    return float(np.max(np.abs(actual.astype("float32") - np.asarray(expected))))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_backbone_hidden_states_match_beit_model(name, tmp_path):
    config = CONFIGS[name]
    reference = save_model(transformers.BeitModel, tmp_path, **config)
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path), image_shape=(None, None, 3))
    sequence, hidden_states = backbone.encode(backbone.input)
    tap = keras.Model(backbone.input, [sequence] + hidden_states)
    for size in (None, _second_size(config)):
        images = _images(config, size)
        expected = run(reference, images, output_hidden_states=True)
        outputs = tap(images)
        assert _max_error(outputs[0], expected.last_hidden_state.numpy()) <= ATOL
        assert len(outputs) - 1 == len(expected.hidden_states)
        for ours, theirs in zip(outputs[1:], expected.hidden_states):
            assert _max_error(ours, theirs.numpy()) <= ATOL


def test_attention_maps_match_transformers_eager_attention(tmp_path):
    config = CONFIGS["shared_and_per_layer_bias"]
    reference = save_model(transformers.BeitModel, tmp_path, attn_implementation="eager", **config)
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path))
    images = _images(config)
    expected = run(reference, images, output_attentions=True).attentions
    _, _, scores = backbone.encode(keras.ops.convert_to_tensor(images), return_attention_scores=True)
    assert len(scores) == len(expected)
    for ours, theirs in zip(scores, expected):
        assert _max_error(ours, theirs.numpy()) <= ATOL


@pytest.mark.parametrize(
    "name", ["per_layer_bias", "cls_pooling", "absolute_positions_dit", "transformers_tester"]
)
def test_classifier_logits_and_pooled_output_match(name, tmp_path):
    config = CONFIGS[name]
    reference = save_model(transformers.BeitForImageClassification, tmp_path, **config)
    fixed = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path))
    images = _images(config)
    assert _max_error(fixed(images), run(reference, images).logits.numpy()) <= ATOL

    flexible = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path), image_shape=(None, None, 3))
    pooled = keras.Model(flexible.input, [flexible.output, flexible.pooler.output])
    for size in (None, _second_size(config)):
        images = _images(config, size, seed=1)
        expected = run(reference, images, output_hidden_states=True)
        with torch.no_grad():
            with_pooler = reference.beit(pixel_values=to_torch(images)).pooler_output.numpy()
        logits, pooled_output = pooled(images)
        assert _max_error(logits, expected.logits.numpy()) <= ATOL
        assert _max_error(pooled_output, with_pooler) <= ATOL


@pytest.mark.parametrize("source", [transformers.BeitForImageClassification, transformers.BeitModel])
def test_a_new_head_keeps_the_checkpoints_trained_pooler_norm(source, tmp_path):
    # As from_pretrained(..., num_labels=3, ignore_mismatched_sizes=True): only the final Dense starts afresh.
    reference = save_model(source, tmp_path, **CONFIGS["per_layer_bias"])
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path), num_classes=3)
    images = _images(CONFIGS["per_layer_bias"])
    with torch.no_grad():
        base = reference.beit if hasattr(reference, "beit") else reference
        expected = base(pixel_values=to_torch(images)).pooler_output.numpy()
    assert _max_error(classifier.pooler(classifier.backbone(images)), expected) <= ATOL
    assert tuple(classifier(images).shape) == (2, 3)


@pytest.mark.parametrize(
    "name", ["shared_bias", "shared_and_per_layer_bias", "absolute_positions_dit"]
)
def test_masked_image_modeling_logits_match(name, tmp_path):
    config = CONFIGS[name]
    reference = save_model(transformers.BeitForMaskedImageModeling, tmp_path, **config)
    model = keras_beit.BEiTMaskedImageModeler.from_preset(str(tmp_path), image_shape=(None, None, 3))
    for size in (None, _second_size(config)):
        images = _images(config, size, seed=2)
        patches = (images.shape[1] // 8) * (images.shape[2] // 8)
        mask = np.random.default_rng(3).random((images.shape[0], patches)) < 0.4
        expected = run(reference, images, bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
        logits = model({"images": images, "mask": mask})
        assert tuple(logits.shape) == (2, patches, config.get("vocab_size", 40))
        assert _max_error(logits, expected) <= ATOL


def test_masked_image_modeling_without_mean_pooling_on_converted_pixels(tmp_path):
    """Two final LayerNorms (the encoder's and the head's); pixels from the image converter beside a numpy mask."""
    config = dict(use_shared_relative_position_bias=True, use_mask_token=True, use_mean_pooling=False)
    reference = save_model(transformers.BeitForMaskedImageModeling, tmp_path, **config)
    model = keras_beit.BEiTMaskedImageModeler.from_preset(str(tmp_path))
    images = np.random.default_rng(4).integers(0, 256, size=(2, 40, 36, 3)).astype("uint8")
    pixels = keras_beit.BEiTImageConverter.from_preset(str(tmp_path))(images)
    mask = np.random.default_rng(5).random((2, 16)) < 0.4
    expected = run(reference, keras.ops.convert_to_numpy(pixels), bool_masked_pos=torch.from_numpy(mask)).logits
    assert _max_error(model({"images": pixels, "mask": mask}), expected.numpy()) <= ATOL


def test_data2vec_vision_checkpoint_loads_like_beit(tmp_path):
    """data2vec-vision writes the BEiT keys under the `data2vec_vision.` prefix."""
    config = transformers.Data2VecVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, num_labels=5, use_relative_position_bias=True, drop_path_rate=0.0,
    )
    reference = randomize(transformers.Data2VecVisionForImageClassification(config))
    reference.save_pretrained(tmp_path)
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path))
    images = _images({})
    assert _max_error(classifier(images), run(reference, images).logits.numpy()) <= ATOL
