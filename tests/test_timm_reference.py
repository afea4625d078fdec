"""timm directories reproduce timm's own outputs.

The fixtures in tests/fixtures/timm were written by timm 1.0 itself
(tests/scripts/make_timm_fixtures.py: `timm.create_model`, every parameter
randomised, `save_for_hf`), with timm's outputs for fixed inputs beside them.
The suite does not install timm (it needs torchvision, a multi-GB build on
these machines); these tests hold keras_beit to the numbers timm produced.
"""

import importlib.util
import json
import os
import re

import keras
import numpy as np
import pytest

import keras_beit

ATOL = 1e-4
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "timm")
CASES = ("beitv2_avg", "beit_token_bin", "beit_shared_abs")


def _fixture(name):
    directory = os.path.join(FIXTURES, name)
    with np.load(os.path.join(directory, "reference.npz")) as data:
        return directory, dict(data)


def _nhwc(images_nchw):
    return np.transpose(images_nchw, (0, 2, 3, 1))


def _error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - expected)))


@pytest.mark.parametrize("name", CASES)
def test_classifier_logits_equal_timm_forward(name):
    directory, reference = _fixture(name)
    classifier = keras_beit.BEiTImageClassifier.from_preset(directory)
    assert _error(classifier(_nhwc(reference["images"])), reference["logits"]) <= ATOL


@pytest.mark.parametrize("name", CASES)
def test_backbone_sequence_equals_forward_features(name):
    directory, reference = _fixture(name)
    backbone = keras_beit.BEiTBackbone.from_preset(directory)
    assert _error(backbone(_nhwc(reference["images"])), reference["features"]) <= ATOL


@pytest.mark.parametrize("name", CASES)
def test_pooled_output_equals_forward_head_pre_logits(name):
    directory, reference = _fixture(name)
    classifier = keras_beit.BEiTImageClassifier.from_preset(directory)
    pooled = classifier.pooler(classifier.backbone(_nhwc(reference["images"])))
    assert _error(pooled, reference["pre_logits"]) <= ATOL


@pytest.mark.parametrize("name", [n for n in CASES if "resized_logits" in _fixture(n)[1]])
def test_a_new_image_size_matches_timm_create_model_at_that_size(name):
    """from_preset(..., image_shape=) resizes the tables as timm's checkpoint_filter_fn does."""
    directory, reference = _fixture(name)
    images = _nhwc(reference["resized_images"])
    classifier = keras_beit.BEiTImageClassifier.from_preset(directory, image_shape=images.shape[1:])
    assert _error(classifier(images), reference["resized_logits"]) <= ATOL


def test_fixtures_come_from_timm():
    with open(os.path.join(FIXTURES, "VERSIONS.json")) as f:
        assert json.load(f)["timm"].startswith("1.")


@pytest.mark.parametrize("name", CASES)
def test_convert_verify_agrees_with_the_source_implementation(name, tmp_path, capsys):
    """`keras-beit convert --verify` on files timm wrote: timm itself where installed, else the renaming."""
    from keras_beit.cli import main

    directory, _ = _fixture(name)
    assert main(["convert", directory, str(tmp_path / "preset"), "--verify"]) == 0
    match = re.search(r"source implementation \((.+)\): (\S+)", capsys.readouterr().out)
    expected = "timm" if importlib.util.find_spec("timm") else "transformers, on the timm tensors renamed"
    assert match.group(1).startswith(expected) and float(match.group(2)) <= ATOL
