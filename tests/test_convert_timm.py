"""timm `beit_*` / `beitv2_*` directories load and reproduce the reference numbers.

timm itself is not installed (too heavy for this machine). The directories
are written the way timm serialises a BEiT model (`save_for_hf`): its state
dict in unilm key names, without `relative_position_index` (non-persistent
in timm), as model.safetensors or pytorch_model.bin, next to a config.json
with "architecture", "num_classes", "global_pool", "model_args" and
"pretrained_cfg". The weights come from a tiny randomised transformers
model, which is the reference forward (max abs error 1e-4).
"""

import keras
import keras_hub
import numpy as np
import pytest
import transformers

import keras_beit
from keras_beit.cli import main
from keras_beit.convert.timm import convert_backbone_config
from keras_beit.convert.timm import image_converter_config
from keras_beit.convert.timm import timm_loader
from original_checkpoints import original_state
from original_checkpoints import save_timm
from transformers_reference import run
from transformers_reference import save_model

ATOL = 1e-4
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# A tiny model: timm's entry point, with create_model keyword overrides saved in "model_args".
TINY_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 1.5}


def _config(architecture="beitv2_base_patch16_224.in1k_ft_in22k_in1k", num_classes=5, global_pool="avg", **extra):
    return {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": 32,
        "global_pool": global_pool,
        "model_args": TINY_ARGS,
        "pretrained_cfg": {
            "input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "num_classes": num_classes,
            "first_conv": "patch_embed.proj", "classifier": "head",
        },
        **extra,
    }


def _images(side=32, seed=0):
    return np.random.default_rng(seed).normal(size=(2, side, side, 3)).astype("float32")


def _error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - np.asarray(expected))))


@pytest.mark.parametrize(
    "weights_file, global_pool",
    [("model.safetensors", "avg"), ("pytorch_model.bin", "avg"), ("model.safetensors", "token")],
    ids=["safetensors_avg", "pytorch_bin_avg", "safetensors_cls_token"],
)
def test_timm_directory_matches(weights_file, global_pool, tmp_path):
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True,
        use_mean_pooling=global_pool == "avg", layer_norm_eps=1e-6,
    )
    directory = save_timm(
        original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", _config(global_pool=global_pool),
        weights_file,
    )
    classifier = keras_beit.BEiTImageClassifier.from_preset(directory)
    assert classifier.backbone.layer_norm_epsilon == 1e-6
    assert classifier.backbone.use_mean_pooling == (global_pool == "avg")
    images = _images()
    assert _error(classifier(images), run(reference, images).logits.numpy()) <= ATOL
    # The image converter follows timm's pretrained_cfg: crop_pct 0.9 in "center" mode resizes the shorter
    # side to floor(32 / 0.9) = 35 and crops 32; bicubic; ImageNet mean/std.
    converter = classifier.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((35, 35), (32, 32), True)
    assert converter.interpolation == "bicubic"
    np.testing.assert_allclose(converter.scale, [1 / 255 / s for s in IMAGENET_STD], rtol=1e-6)
    np.testing.assert_allclose(converter.offset, [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], rtol=1e-6)


# Architectures as timm registers them (original_and_timm.md 2.1; hf_beit.md 6):
# (hidden, layers, heads, intermediate, image size, layer scale).
PUBLISHED = {
    "beit_base_patch16_224.in22k_ft_in22k_in1k": (768, 12, 12, 3072, 224, 0.1),
    "beit_base_patch16_384.in22k_ft_in22k_in1k": (768, 12, 12, 3072, 384, 0.1),
    "beit_large_patch16_224.in22k_ft_in22k": (1024, 24, 16, 4096, 224, 1e-5),
    "beit_large_patch16_384.in22k_ft_in22k_in1k": (1024, 24, 16, 4096, 384, 1e-5),
    "beit_large_patch16_512.in22k_ft_in22k_in1k": (1024, 24, 16, 4096, 512, 1e-5),
    "beitv2_base_patch16_224.in1k_ft_in1k": (768, 12, 12, 3072, 224, 1e-5),
    "beitv2_large_patch16_224.in1k_ft_in22k_in1k": (1024, 24, 16, 4096, 224, 1e-5),
}


@pytest.mark.parametrize("architecture", sorted(PUBLISHED))
def test_architecture_names_map_to_timm_configs(architecture):
    hidden, layers, heads, intermediate, size, layer_scale = PUBLISHED[architecture]
    config = convert_backbone_config({"architecture": architecture, "num_classes": 1000})
    assert (config["hidden_dim"], config["num_layers"], config["num_heads"]) == (hidden, layers, heads)
    assert config["intermediate_dim"] == intermediate and config["patch_size"] == 16
    assert config["image_shape"] == (size, size, 3) and config["window_size"] == (size // 16, size // 16)
    assert config["layer_scale_init_value"] == layer_scale and config["layer_norm_epsilon"] == 1e-6
    assert config["use_relative_position_bias"] and not config["use_shared_relative_position_bias"]
    assert not config["use_absolute_position_embeddings"] and config["use_mean_pooling"]


def test_beit_base_224_has_the_published_parameter_count():
    """86,530,984 parameters with the 1000-class head (original_and_timm.md 0; timm 86.53M)."""
    backbone = keras_beit.BEiTBackbone(**convert_backbone_config({"architecture": "beit_base_patch16_224"}))
    assert keras_beit.BEiTImageClassifier(backbone, 1000).count_params() == 86_530_984


def test_none_in_model_args_keeps_the_entry_point_value_as_timm_create_model_does():
    # timm drops None keyword arguments, so beit_base_patch16_224 keeps its init_values=0.1.
    config = convert_backbone_config({"architecture": "beit_base_patch16_224", "model_args": {"init_values": None}})
    assert config["layer_scale_init_value"] == 0.1
    no_scale = convert_backbone_config({"architecture": "beit_base_patch16_224", "model_args": {"init_values": 0.0}})
    assert no_scale["layer_scale_init_value"] == 0.0


def test_pooling_combinations_keras_beit_cannot_express_are_refused():
    with pytest.raises(ValueError, match="use_fc_norm=False with global_pool='avg'"):
        convert_backbone_config({"architecture": "beit_base_patch16_224", "model_args": {"use_fc_norm": False}})
    with pytest.raises(ValueError, match="global_pool must be 'avg', 'token' or ''"):
        convert_backbone_config({"architecture": "beit_base_patch16_224", "global_pool": "max"})


def test_global_pool_none_loads_as_a_backbone_but_not_with_its_per_token_head(tmp_path):
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True,
        use_mean_pooling=False, layer_norm_eps=1e-6,
    )
    directory = save_timm(original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", _config(global_pool=""))
    backbone = keras_beit.BEiTBackbone.from_preset(directory)
    images = _images()
    hidden = run(reference, images, output_hidden_states=True)
    # timm's forward_features with global_pool '': the final norm over the whole sequence.
    normalised = reference.beit.layernorm(hidden.hidden_states[-1]).detach().numpy()
    assert _error(backbone(images), normalised) <= ATOL
    with pytest.raises(ValueError, match="global_pool=''.*every token"):
        keras_beit.BEiTImageClassifier.from_preset(directory)
    assert tuple(keras_beit.BEiTImageClassifier.from_preset(directory, num_classes=3)(images).shape) == (2, 3)
    # keras-beit convert writes it as a backbone preset.
    assert main(["convert", directory, str(tmp_path / "preset")]) == 0
    assert isinstance(keras_hub.models.Backbone.from_preset(str(tmp_path / "preset")), keras_beit.BEiTBackbone)
    assert not (tmp_path / "preset" / "task.json").exists()


def test_a_headless_directory_loads_as_a_backbone_and_needs_num_classes_for_a_classifier(tmp_path):
    reference = save_model(transformers.BeitModel, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6)
    state = {k: v for k, v in original_state(tmp_path / "hf", store_index=False).items()}
    assert not any(k.startswith("head.") for k in state)
    directory = save_timm(state, tmp_path / "timm", _config(num_classes=0))
    backbone = keras_beit.BEiTBackbone.from_preset(directory)
    images = _images()
    assert _error(backbone(images), run(reference, images).last_hidden_state.numpy()) <= ATOL
    with pytest.raises(ValueError, match="num_classes"):
        keras_beit.BEiTImageClassifier.from_preset(directory)
    assert tuple(keras_beit.BEiTImageClassifier.from_preset(directory, num_classes=3)(images).shape) == (2, 3)


def test_keras_hub_entry_points_and_a_new_resolution(tmp_path):
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6
    )
    directory = save_timm(original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", _config())
    classifier = keras_hub.models.ImageClassifier.from_preset(directory)
    assert isinstance(classifier, keras_beit.BEiTImageClassifier)
    images = _images()
    assert _error(classifier(images), run(reference, images).logits.numpy()) <= ATOL
    # timm's own resize (piecewise linear on the geometric grid), once, for a 48 x 40 model.
    resized = keras_beit.BEiTImageClassifier.from_preset(
        directory, image_shape=(48, 40, 3), position_resize="geometric_linear"
    )
    assert resized.backbone.window_size == (6, 5)
    table = resized.backbone.relative_position_biases[0].relative_position_bias_table
    assert tuple(table.shape) == (11 * 9 + 3, 4)
    logits = keras.ops.convert_to_numpy(resized(np.zeros((1, 48, 40, 3), "float32")))
    assert logits.shape == (1, 5) and np.all(np.isfinite(logits))


def test_the_evaluation_crop_follows_the_size_the_model_is_loaded_at(tmp_path):
    # timm's transform for a 48 x 40 model with crop_pct 0.9: resize to cover floor(48 / 0.9) x floor(40 / 0.9)
    # = 53 x 44 keeping the aspect ratio, then crop 48 x 40; predict() then takes images of any size.
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True)
    directory = save_timm(original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", _config())
    resized = keras_beit.BEiTImageClassifier.from_preset(directory, image_shape=(48, 40, 3))
    converter = resized.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((53, 44), (48, 40), True)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 90, 61, 3)).astype("uint8")
    assert resized.predict(images, verbose=0).shape == (2, 5)


def test_a_segmenter_started_from_a_timm_directory_resizes_whole_images(tmp_path):
    # The crop is timm's classification evaluation; a segmenter labels every pixel, so its maps need the whole image.
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True)
    directory = save_timm(original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", _config())
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(directory, num_classes=3, out_indices=[0, 1, 1, 1])
    converter = segmenter.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size, converter.keep_aspect_ratio) == ((32, 32), None, False)
    np.testing.assert_allclose(converter.scale, [1 / 255 / s for s in IMAGENET_STD], rtol=1e-6)


def _pretrained(**settings):
    return {"pretrained_cfg": {"input_size": [3, 224, 224], "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **settings}}


@pytest.mark.parametrize(
    "settings, resize, keeps_aspect",
    [
        ({"crop_pct": 0.9, "crop_mode": "center"}, (248, 248), True),  # beit*_224: floor(224 / 0.9)
        ({"crop_pct": 1.0, "crop_mode": "center"}, (224, 224), True),  # beit*_384: shorter side, then crop
        ({"crop_pct": 0.95, "crop_mode": "squash"}, (235, 235), False),  # both sides to floor(224 / 0.95)
        ({}, (256, 256), True),  # timm's defaults: crop_pct 0.875, center
    ],
    ids=["center_0.9", "center_1.0", "squash_0.95", "timm_defaults"],
)
def test_the_image_converter_takes_timm_crop_pct_and_crop_mode(settings, resize, keeps_aspect):
    config = image_converter_config(_pretrained(**settings))
    assert (config["image_size"], config["crop_size"], config["keep_aspect_ratio"]) == (resize, (224, 224), keeps_aspect)


def test_a_border_crop_mode_is_refused_with_the_supported_modes():
    with pytest.raises(ValueError, match=r"crop_mode 'border' is not supported.*'center' and 'squash'"):
        image_converter_config(_pretrained(crop_pct=0.9, crop_mode="border"))


def test_unknown_names_are_read_from_shapes_and_other_models_are_not_claimed(tmp_path):
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6
    )
    state = original_state(tmp_path / "hf", store_index=False)
    config = {"architecture": "beit_tiny_patch8_32", "num_classes": 5, "pretrained_cfg": {"input_size": [3, 32, 32]}}
    directory = save_timm(state, tmp_path / "custom", config)
    classifier = keras_beit.BEiTImageClassifier.from_preset(directory)
    images = _images()
    assert _error(classifier(images), run(reference, images).logits.numpy()) <= ATOL
    # BEiT-3 is timm's VisionTransformer with other keys; a ViT is not BEiT at all.
    for architecture in ("beit3_base_patch16_224", "vit_base_patch16_224"):
        other = save_timm(state, tmp_path / architecture, {"architecture": architecture, "num_classes": 5})
        assert timm_loader(other) is None
