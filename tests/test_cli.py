"""The keras-beit command line: convert (with --verify) and presets."""

import os
import re

import keras
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

import keras_beit
from keras_beit.cli import main
from original_checkpoints import original_state
from original_checkpoints import save_mmseg
from original_checkpoints import save_pth
from original_checkpoints import save_timm
from original_checkpoints import to_mmseg
from transformers_reference import run
from transformers_reference import save_model

VERIFIED = re.compile(r"max abs difference against the source implementation \((.*)\): (\S+)")


def _verified(printed):
    """(reference description, error) from the --verify line."""
    reference, error = VERIFIED.search(printed).groups()
    return reference, float(error)


def test_convert_writes_a_preset_that_matches_the_source(tmp_path, capsys):
    source, output = tmp_path / "hf", tmp_path / "preset"
    reference = save_model(transformers.BeitForImageClassification, source, use_relative_position_bias=True)
    assert main(["convert", str(source), str(output), "--verify"]) == 0
    assert _verified(capsys.readouterr().out) <= ("transformers", 1e-4)
    for name in ("config.json", "model.weights.h5", "task.json", "preprocessor.json", "metadata.json"):
        assert os.path.exists(output / name)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".keras_beit")]  # no staging left behind
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(output))
    images = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    expected = run(reference, images).logits.numpy()
    assert np.abs(keras.ops.convert_to_numpy(classifier(images)) - expected).max() <= 1e-4


@pytest.mark.parametrize("target", ["a_folder_with_other_files", "the_source_itself"])
def test_convert_never_replaces_a_directory_that_is_not_a_preset(target, tmp_path, capsys):
    source = tmp_path / "hf"
    save_model(transformers.BeitForImageClassification, source, use_relative_position_bias=True)
    output = source if target == "the_source_itself" else tmp_path / "mine"
    output.mkdir(exist_ok=True)
    (output / "notes.txt").write_text("keep me")
    before = sorted(os.listdir(output))
    assert main(["convert", str(source), str(output)]) == 2
    assert "is not a keras_beit preset" in capsys.readouterr().err
    assert sorted(os.listdir(output)) == before and (output / "notes.txt").read_text() == "keep me"


def test_convert_replaces_an_earlier_preset_with_ordinary_permissions(tmp_path):
    source, output = tmp_path / "hf", tmp_path / "preset"
    save_model(transformers.BeitModel, source, use_relative_position_bias=True)
    assert main(["convert", str(source), str(output)]) == 0
    assert main(["convert", str(source), str(output), "--image-size", "48"]) == 0
    assert keras_beit.BEiTBackbone.from_preset(str(output)).image_shape == (48, 48, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(output).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_convert_at_another_image_size(tmp_path):
    source, output = tmp_path / "hf", tmp_path / "preset"
    save_model(transformers.BeitModel, source, use_relative_position_bias=True)
    assert main(["convert", str(source), str(output), "--image-size", "48"]) == 0
    backbone = keras_beit.BEiTBackbone.from_preset(str(output))
    assert backbone.image_shape == (48, 48, 3)
    assert tuple(backbone(np.zeros((1, 48, 48, 3), "float32")).shape) == (1, 37, 32)


def test_presets_lists_the_catalogue(capsys):
    assert main(["presets"]) == 0
    printed = capsys.readouterr().out
    assert "beit_base_patch16_224\n" in printed and "imagenet_top1 85.2" in printed
    assert "beit_base_patch16_640_ade20k" in printed and "microsoft/beit-base-finetuned-ade-640-640" in printed
    # The preset shipped in the package is listed too, with where it lives.
    assert "beit_tiny_digits\n" in printed and "bundled: keras_beit/assets/beit_tiny_digits" in printed


def test_convert_of_a_handle_the_hub_cannot_serve_exits_2_with_the_reason(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("KERAS_BEIT_CACHE", str(tmp_path / "cache"))
    assert main(["convert", "beit_base_patch16_224", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("keras-beit convert: Could not fetch 'microsoft/beit-base-patch16-224'")
    assert not (tmp_path / "out").exists()


def _original_classifier(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6)
    return save_pth(original_state(tmp_path / "hf"), tmp_path / "beit_tiny_patch8_32_pt22k_ft22k.pth")


def _original_segmenter(tmp_path):
    save_model(
        transformers.BeitForSemanticSegmentation, tmp_path / "hf", image_size=48, num_hidden_layers=4,
        out_indices=[1, 2, 3, 4], auxiliary_channels=16, use_relative_position_bias=True, layer_norm_eps=1e-6,
    )
    state = to_mmseg(load_file(tmp_path / "hf" / "model.safetensors"))
    path = tmp_path / "beit_tiny_patch8_48_ade20k.pth"
    meta = {"config": "backbone=dict(out_indices=[0, 1, 2, 3])"}
    return save_mmseg(state, path, meta)


def _timm_classifier(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6)
    config = {
        "architecture": "beit_base_patch16_224", "num_classes": 5,
        "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 1.5},
    }
    return save_timm(original_state(tmp_path / "hf", store_index=False), tmp_path / "timm", config)


def _transformers_segmenter(tmp_path):
    # Converted with the original tap points (blocks 0..3 here); --verify must tap the same blocks in transformers.
    save_model(
        transformers.BeitForSemanticSegmentation, tmp_path / "hf", image_size=48, num_hidden_layers=4,
        out_indices=[0, 1, 2, 3], auxiliary_channels=16, use_relative_position_bias=True,
    )
    return str(tmp_path / "hf")


def _original_encoder_only(tmp_path):
    # No head and no final norm (mean pooling, fc_norm dropped): converted and verified as a backbone.
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", use_relative_position_bias=True, layer_norm_eps=1e-6)
    state = {k: v for k, v in original_state(tmp_path / "hf").items() if not k.startswith(("head.", "fc_norm."))}
    return save_pth(state, tmp_path / "beit_tiny_encoder.pth")


# timm is not installed in CI, so its directory is checked through the documented renaming into transformers.
@pytest.mark.parametrize(
    "source, reference",
    [
        (_original_classifier, "transformers, on the original tensors renamed"),
        (_original_segmenter, "transformers, on the original tensors renamed"),
        (_timm_classifier, "transformers, on the timm tensors renamed (timm is not installed)"),
        (_transformers_segmenter, "transformers"),
        (_original_encoder_only, "transformers, on the original tensors renamed"),
    ],
    ids=["unilm_pth", "mmseg_pth", "timm_directory", "transformers_segmentation_original_taps", "encoder_only_pth"],
)
def test_verify_runs_the_source_implementation_of_every_format(source, reference, tmp_path, capsys):
    assert main(["convert", source(tmp_path), str(tmp_path / "preset"), "--verify"]) == 0
    described, error = _verified(capsys.readouterr().out)
    assert described == reference and error <= 1e-4


def test_verify_reports_a_wrong_conversion(tmp_path, capsys, monkeypatch):
    source = _original_classifier(tmp_path)
    from keras_beit.convert import verify

    renamed = verify.original_to_transformers
    # A reference that swaps two blocks' first norms must be caught.
    def swapped(state, **kwargs):
        state = renamed(state, **kwargs)
        a, b = "beit.encoder.layer.0.layernorm_before.weight", "beit.encoder.layer.1.layernorm_before.weight"
        state[a], state[b] = state[b], state[a]
        return state

    monkeypatch.setattr(verify, "original_to_transformers", swapped)
    assert main(["convert", source, str(tmp_path / "preset"), "--verify"]) == 1
    assert _verified(capsys.readouterr().out)[1] > 1e-4


def test_verify_of_a_masked_image_modeler_with_two_final_norms(tmp_path, capsys):
    # Without mean pooling the file holds beit.layernorm and layernorm; transformers 5.24's
    # from_pretrained loads each into the other, which --verify must not take for our error.
    save_model(
        transformers.BeitForMaskedImageModeling, tmp_path / "hf", use_shared_relative_position_bias=True,
        use_mask_token=True, use_mean_pooling=False,
    )
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "preset"), "--verify"]) == 0
    described, error = _verified(capsys.readouterr().out)
    assert described == "transformers" and error <= 1e-4


def test_a_converted_masked_image_modeler_keeps_its_image_converter(tmp_path):
    # MIM has no preprocessor, so the converter is saved beside the task: BEiTImageConverter.from_preset works.
    save_model(
        transformers.BeitForMaskedImageModeling, tmp_path / "hf", use_shared_relative_position_bias=True,
        use_mask_token=True,
    )
    transformers.BeitImageProcessorPil(size={"height": 32, "width": 32}, resample=3).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "preset")]) == 0
    converter = keras_beit.BEiTImageConverter.from_preset(str(tmp_path / "preset"))
    assert converter.image_size == (32, 32) and converter.interpolation == "bicubic"


def test_convert_of_a_file_in_no_known_layout_exits_2_with_the_reason(tmp_path, capsys):
    path = save_pth({"weights": np.zeros(3, "float32")}, tmp_path / "other_model.pth")
    assert main(["convert", path, str(tmp_path / "preset")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-beit convert: ") and "is not a BEiT checkpoint" in error
    assert "Traceback" not in error and not (tmp_path / "preset").exists()
