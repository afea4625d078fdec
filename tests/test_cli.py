"""The keras-beit command line: convert (with --verify) and presets."""

import os

import keras
import numpy as np
import transformers

import keras_beit
from keras_beit.cli import main
from transformers_reference import run
from transformers_reference import save_model


def test_convert_writes_a_preset_that_matches_the_source(tmp_path, capsys):
    source, output = tmp_path / "hf", tmp_path / "preset"
    reference = save_model(transformers.BeitForImageClassification, source, use_relative_position_bias=True)
    assert main(["convert", str(source), str(output), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference against the source implementation" in printed
    error = float(printed.split("implementation: ")[1].split()[0])
    assert error <= 1e-4
    for name in ("config.json", "model.weights.h5", "task.json", "preprocessor.json", "metadata.json"):
        assert os.path.exists(output / name)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".keras_beit")]  # no staging left behind
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(output))
    images = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    expected = run(reference, images).logits.numpy()
    assert np.abs(keras.ops.convert_to_numpy(classifier(images)) - expected).max() <= 1e-4


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
