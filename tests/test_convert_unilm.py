"""Original microsoft/unilm `.pth` checkpoints load and reproduce the reference numbers.

Each file is written from a tiny transformers model with every parameter
randomised (LayerNorm epsilon 1e-6, the original's), through the inverse of
the documented key mapping (tests/original_checkpoints.py), in the layout
the unilm scripts save: `torch.save({"model": state_dict}, path)`, with the
`relative_position_index` buffers the original stores. The reference is the
transformers model; errors are max abs, fp32, at most 1e-4.
"""

import argparse

import keras
import numpy as np
import pytest
import torch
import transformers

import keras_beit
from keras_beit.convert.unilm import unilm_loader
from keras_beit.convert.weights import CheckpointMismatchError
from original_checkpoints import original_state
from original_checkpoints import save_pth
from transformers_reference import run
from transformers_reference import save_model

ATOL = 1e-4
ORIGINAL = dict(layer_norm_eps=1e-6)
PRETRAINING = dict(use_shared_relative_position_bias=True, use_mask_token=True, **ORIGINAL)
FINE_TUNED = dict(use_relative_position_bias=True, **ORIGINAL)


def _images(side=32, seed=0):
    return np.random.default_rng(seed).normal(size=(2, side, side, 3)).astype("float32")


def _mask(seed=1):
    return np.random.default_rng(seed).random((2, 16)) < 0.4


def _error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - np.asarray(expected))))


def _pretraining_file(tmp_path, wrapper="model", **config):
    reference = save_model(transformers.BeitForMaskedImageModeling, tmp_path / "hf", **{**PRETRAINING, **config})
    return reference, original_state(tmp_path / "hf")


def test_pretraining_checkpoint_gives_the_masked_image_modeling_logits(tmp_path):
    reference, state = _pretraining_file(tmp_path)
    assert "rel_pos_bias.relative_position_index" in state  # stored by the original, skipped on load
    path = save_pth(state, tmp_path / "beit_base_patch16_224_pt22k.pth")
    model = keras_beit.BEiTMaskedImageModeler.from_preset(path)
    backbone = model.backbone
    assert backbone.shared_relative_position_bias is not None and not backbone.relative_position_biases
    assert backbone.layer_norm_epsilon == 1e-6 and backbone.num_heads == 4 and backbone.window_size == (4, 4)
    assert model.vocabulary_size == 40
    images, mask = _images(), _mask()
    expected = run(reference, images, bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
    assert _error(model({"images": images, "mask": mask}), expected) <= ATOL


@pytest.mark.parametrize("mean_pooling", [True, False], ids=["fc_norm_mean_pooling", "norm_cls_pooling"])
def test_fine_tuned_classifier_matches(mean_pooling, tmp_path):
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path / "hf", use_mean_pooling=mean_pooling, **FINE_TUNED
    )
    state = original_state(tmp_path / "hf")
    assert ("fc_norm.weight" in state) == mean_pooling and ("norm.weight" in state) != mean_pooling
    path = save_pth(state, tmp_path / "beit_base_patch16_224_pt22k_ft22kto1k.pth")
    classifier = keras_beit.BEiTImageClassifier.from_preset(path)
    assert classifier.backbone.use_mean_pooling == mean_pooling and classifier.num_classes == 5
    images = _images()
    expected = run(reference, images, output_hidden_states=True)
    assert _error(classifier(images), expected.logits.numpy()) <= ATOL
    # The backbone alone loads from the same file, leaving the head's keys aside.
    backbone = keras_beit.BEiTBackbone.from_preset(path)
    last = expected.hidden_states[-1].numpy()
    if not mean_pooling:
        with torch.no_grad():
            last = reference.beit.layernorm(expected.hidden_states[-1]).numpy()
    assert _error(backbone(images), last) <= ATOL
    # The original evaluation transform: shorter side to int(32 / (224 / 256)) = 36, bicubic, centre crop 32.
    converter = classifier.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((36, 36), (32, 32), True)
    assert converter.interpolation == "bicubic"


def test_beit_v2_file_under_module_without_its_patch_aggregation_head(tmp_path):
    reference, state = _pretraining_file(tmp_path)
    # v2 pre-training adds the patch-aggregation layers (a shallow second head of blocks).
    for name in ("norm1.weight", "attn.qkv.weight", "mlp.fc1.weight"):
        state[f"cls_pt_layers.0.{name}"] = np.ones((3, 3), "float32")
    path = save_pth(state, tmp_path / "beitv2_base_patch16_224_pt1k.pth", wrapper="module")
    model = keras_beit.BEiTMaskedImageModeler.from_preset(path)
    images, mask = _images(), _mask()
    expected = run(reference, images, bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
    assert _error(model({"images": images, "mask": mask}), expected) <= ATOL


def test_dit_absolute_positions(tmp_path):
    # 64-wide heads, as every released model has: the head count is not in a file without tables.
    config = dict(use_absolute_position_embeddings=True, use_mask_token=True, hidden_size=64,
                  num_attention_heads=1, intermediate_size=32, **ORIGINAL)
    reference = save_model(transformers.BeitForMaskedImageModeling, tmp_path / "hf", **config)
    state = original_state(tmp_path / "hf")
    assert "pos_embed" in state and not any("relative_position" in k for k in state)
    path = save_pth(state, tmp_path / "dit-base-224-p16-500k.pth")
    model = keras_beit.BEiTMaskedImageModeler.from_preset(path)
    backbone = model.backbone
    assert backbone.use_absolute_position_embeddings and backbone.num_heads == 1
    assert backbone.shared_relative_position_bias is None and not backbone.relative_position_biases
    images, mask = _images(), _mask()
    expected = run(reference, images, bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
    assert _error(model({"images": images, "mask": mask}), expected) <= ATOL


def test_a_new_head_keeps_the_files_trained_fc_norm(tmp_path):
    reference = save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    path = save_pth(original_state(tmp_path / "hf"), tmp_path / "beit_base_patch16_224_pt22k_ft22k.pth")
    classifier = keras_beit.BEiTImageClassifier.from_preset(path, num_classes=3)
    images = _images()
    with torch.no_grad():
        expected = reference.beit(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output
    assert _error(classifier.pooler(classifier.backbone(images)), expected.numpy()) <= ATOL


def test_shared_table_is_copied_into_every_block_for_fine_tuning(tmp_path):
    reference, state = _pretraining_file(tmp_path)
    path = save_pth(state, tmp_path / "pretrained.pth")
    classifier = keras_beit.BEiTImageClassifier.from_preset(
        path, num_classes=10, use_relative_position_bias=True, use_shared_relative_position_bias=False
    )
    backbone = classifier.backbone
    assert backbone.shared_relative_position_bias is None and len(backbone.relative_position_biases) == 2
    shared = state["rel_pos_bias.relative_position_bias_table"]
    for bias in backbone.relative_position_biases:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias.relative_position_bias_table), shared)
    images = _images()
    assert _error(backbone(images), run(reference.beit, images).last_hidden_state.numpy()) <= ATOL
    assert tuple(classifier(images).shape) == (2, 10)


def test_a_segmenter_starts_from_a_pretraining_file_with_new_pyramid_and_heads(tmp_path):
    # How the original semantic segmentation fine-tuning starts: BEiT's pre-trained blocks, new FPN and UperNet.
    reference, state = _pretraining_file(tmp_path, num_hidden_layers=4)
    path = save_pth(state, tmp_path / "pretrained.pth")
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(path, num_classes=5, out_indices=(0, 1, 2, 3))
    images = _images()
    _, hidden_states = segmenter.backbone.encode(images)
    expected = run(reference.beit, images, output_hidden_states=True).hidden_states
    for mine, theirs in zip(hidden_states, expected):
        assert _error(mine, theirs.numpy()) <= ATOL
    assert tuple(segmenter(images).shape) == (2, 16, 16, 5)
    # Maps need the whole image: no evaluation crop.
    converter = segmenter.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((32, 32), None, False)
    with pytest.raises(ValueError, match="no segmentation head; pass num_classes"):
        keras_beit.BEiTImageSegmenter.from_preset(path)


def test_the_evaluation_crop_is_the_original_scripts_at_each_size(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    state = original_state(tmp_path / "hf")
    path = save_pth(state, tmp_path / "beit_base_patch16_224_pt22k_ft22kto1k.pth")
    # Below 384: the shorter side to int(48 / (224 / 256)) = 54, then a 48 centre crop.
    converter = keras_beit.BEiTImageClassifier.from_preset(path, image_shape=(48, 48, 3)).preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((54, 54), (48, 48), True)
    # At 384, crop_pct 1.0: BEiT v1 and DiT resize the shorter side to 384 and crop; BEiT v2 stretches the image.
    expected = {"beit_large.pth": ((384, 384), (384, 384), True), "beitv2_large.pth": ((384, 384), None, False)}
    # A converter loaded on its own takes the crop from a classification file, not from a pre-training one.
    assert keras_beit.BEiTImageConverter.from_preset(path).crop_size == (32, 32)
    _, pretraining = _pretraining_file(tmp_path / "pt")
    assert keras_beit.BEiTImageConverter.from_preset(save_pth(pretraining, tmp_path / "pt.pth")).crop_size is None
    for name, (resize, crop, keeps_aspect) in expected.items():
        loader = unilm_loader(save_pth(state, tmp_path / name))
        loader.image_size = (384, 384)
        config = loader.converter_config()
        assert (config["image_size"], config.get("crop_size"), config.get("keep_aspect_ratio", False)) == (
            resize, crop, keeps_aspect
        )


def test_training_arguments_next_to_the_weights_are_allowed(tmp_path):
    reference = save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    path = save_pth(original_state(tmp_path / "hf"), tmp_path / "checkpoint-99.pth",
                    epoch=99, args=argparse.Namespace(model="beit_base_patch16_224", lr=5e-4))
    classifier = keras_beit.BEiTImageClassifier.from_preset(path)
    images = _images()
    assert _error(classifier(images), run(reference, images).logits.numpy()) <= ATOL


@pytest.mark.parametrize("layout", ["state_dict", "encoder_prefix"])
def test_state_dict_wrappers_and_encoder_prefixes_the_original_scripts_accept_load(layout, tmp_path):
    # unilm's segmentation fine-tuning reads weights under "state_dict"; BEiT v2's strips an "encoder." prefix.
    reference = save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    state = original_state(tmp_path / "hf")
    if layout == "state_dict":
        path = save_pth(state, tmp_path / "checkpoint.pth", wrapper="state_dict")
    else:
        encoder = {("encoder." + k if not k.startswith(("head.", "fc_norm.")) else k): v for k, v in state.items()}
        path = save_pth(encoder, tmp_path / "checkpoint.pth")
    classifier = keras_beit.BEiTImageClassifier.from_preset(path)
    images = _images()
    assert _error(classifier(images), run(reference, images).logits.numpy()) <= ATOL


def test_a_file_in_no_known_layout_is_refused_with_the_keys_expected_and_found(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    state = {k: v for k, v in original_state(tmp_path / "hf").items() if k != "cls_token"}
    path = save_pth(state, tmp_path / "no_cls_token.pth")
    with pytest.raises(ValueError, match=r"not a BEiT checkpoint.*holds cls_token, patch_embed.proj.weight.*"
                                         r"top-level keys: \['model'\].*first keys: \['blocks.0"):
        keras_beit.BEiTImageClassifier.from_preset(path)
    with pytest.raises(FileNotFoundError, match="No checkpoint file at .*missing.pth"):
        keras_beit.BEiTBackbone.from_preset(str(tmp_path / "missing.pth"))


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "malicious.pth"
    torch.save({"model": {"cls_token": Payload()}}, path)
    with pytest.raises(ValueError, match="Refusing to load"):
        keras_beit.BEiTBackbone.from_preset(str(path))
    assert not marker.exists()


def test_a_file_that_does_not_fit_lists_the_offending_keys(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **FINE_TUNED)
    state = original_state(tmp_path / "hf")
    state["blocks.0.attn.extra_scale"] = np.ones(4, "float32")
    del state["blocks.1.mlp.fc2.bias"]
    path = save_pth(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        keras_beit.BEiTImageClassifier.from_preset(path)
    assert "blocks.0.attn.extra_scale" in str(error.value) and "blocks.1.mlp.fc2.bias" in str(error.value)


def test_segmentation_files_are_left_to_the_segmentation_loader(tmp_path):
    save_model(transformers.BeitModel, tmp_path / "hf", **FINE_TUNED)
    state = {f"backbone.{k}": v for k, v in original_state(tmp_path / "hf").items()}
    path = tmp_path / "beit_base_patch16_640_pt22k_ft22ktoade20k.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "meta": {}}, path)
    assert unilm_loader(str(path)) is None
