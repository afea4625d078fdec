"""The preset catalogue and `from_preset` on names and hf:// handles, offline."""

import os

import keras
import keras_hub
import numpy as np
import pytest
import transformers

import keras_beit
from keras_beit.presets import CATALOGUE
from transformers_reference import run
from transformers_reference import save_model

# Published configurations (hf_beit.md section 6 and the original READMEs).
KNOWN = {
    "base": dict(hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072),
    "large": dict(hidden_dim=1024, num_layers=24, num_heads=16, intermediate_dim=4096),
}


def _size_of(name):
    return "large" if "_large_" in name else "base"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_entry_matches_the_published_configuration(name):
    entry = CATALOGUE[name]
    architecture = entry["architecture"]
    for key, value in KNOWN[_size_of(name)].items():
        assert architecture[key] == value
    assert architecture["patch_size"] == 16
    image_size = int(name.split("_patch16_")[1].split("_")[0])
    assert architecture["image_size"] == image_size
    assert entry["preprocessing"]["image_size"] == (image_size, image_size)
    family = name.split("_")[0]
    if family == "dit":
        assert architecture.get("use_absolute_position_embeddings") and not architecture.get("use_relative_position_bias")
    elif entry["task"] in ("masked_image_modeler", "backbone"):
        assert architecture.get("use_shared_relative_position_bias")
    else:
        assert architecture.get("use_relative_position_bias")
    assert entry["sources"] and entry["license"] and entry["description"]
    expected_classes = {"image_classifier": (16, 1000, 21841), "image_segmenter": (150,), "masked_image_modeler": (8192,)}
    if entry["task"] in expected_classes:
        assert entry["num_classes"] in expected_classes[entry["task"]]


def test_catalogue_covers_every_official_family():
    names = set(CATALOGUE)
    for required in (
        "beit_base_patch16_224_pt22k", "beit_large_patch16_224_pt22k",
        "beit_base_patch16_224_pt22k_ft22k", "beit_large_patch16_224_pt22k_ft22k",
        "beit_base_patch16_224", "beit_base_patch16_384", "beit_large_patch16_224",
        "beit_large_patch16_384", "beit_large_patch16_512",
        "beit_base_patch16_640_ade20k", "beit_large_patch16_640_ade20k",
        "beitv2_base_patch16_224", "beitv2_large_patch16_224",
        "dit_base_patch16_224", "dit_large_patch16_224",
        "dit_base_patch16_224_rvlcdip", "dit_large_patch16_224_rvlcdip",
        "data2vec_vision_base_patch16_224", "data2vec_vision_large_patch16_224",
        "data2vec_vision_base_patch16_224_ft1k", "data2vec_vision_large_patch16_224_ft1k",
    ):
        assert required in names


def test_published_accuracies_are_recorded():
    assert CATALOGUE["beit_large_patch16_512"]["metrics"]["imagenet_top1"] == 88.6
    assert CATALOGUE["beit_base_patch16_640_ade20k"]["metrics"]["ade20k_miou"] == 53.6
    assert CATALOGUE["beit_large_patch16_640_ade20k"]["metrics"]["ade20k_miou"] == 56.7
    assert CATALOGUE["dit_base_patch16_224_rvlcdip"]["metrics"]["rvlcdip_accuracy"] == 92.11


def test_presets_are_listed_on_our_classes_and_keras_hub_base_classes():
    for name in CATALOGUE:
        assert name in keras_beit.BEiTBackbone.presets
        assert name in keras_hub.models.Backbone.presets


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A huggingface_hub cache laid out by hand, with network access switched off."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("KERAS_BEIT_CACHE", str(tmp_path / "keras_beit"))

    def add_repo(repo_id, model_cls, **config):
        revision = "0" * 40
        repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        return save_model(model_cls, snapshot, **config), snapshot

    return add_repo


def _images():
    return np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")


def _max_error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - expected)))


def test_hf_handle_converts_once_and_then_loads_from_the_cache(offline_hub, tmp_path):
    import shutil

    reference, snapshot = offline_hub(
        "microsoft/beit-tiny", transformers.BeitForImageClassification, use_relative_position_bias=True
    )
    images = _images()
    expected = run(reference, images).logits.numpy()
    first = keras_beit.BEiTImageClassifier.from_preset("hf://microsoft/beit-tiny")
    assert _max_error(first(images), expected) <= 1e-4
    converted = tmp_path / "keras_beit" / "hf" / "microsoft--beit-tiny"
    assert (converted / "task.json").exists() and (converted / "model.weights.h5").exists()
    shutil.rmtree(snapshot)  # the second load must not need the source any more
    (snapshot).mkdir()
    (snapshot / "config.json").write_text('{"model_type": "beit"}')
    second = keras_beit.BEiTImageClassifier.from_preset("hf://microsoft/beit-tiny")
    assert _max_error(second(images), expected) <= 1e-4


def test_keras_hub_base_classes_load_a_beit_hf_handle(offline_hub):
    reference, _ = offline_hub(
        "microsoft/beit-tiny-mim", transformers.BeitForMaskedImageModeling,
        use_shared_relative_position_bias=True, use_mask_token=True,
    )
    backbone = keras_hub.models.Backbone.from_preset("hf://microsoft/beit-tiny-mim")
    assert isinstance(backbone, keras_beit.BEiTBackbone) and backbone.use_mask_token
    images = _images()
    expected = run(reference.beit, images).last_hidden_state.numpy()
    assert _max_error(backbone(images), expected) <= 1e-4


def test_catalogue_names_resolve_through_their_source(offline_hub, monkeypatch):
    from keras_beit.convert.keras_hub_integration import register_catalogue

    reference, _ = offline_hub(
        "microsoft/beit-tiny-224", transformers.BeitForImageClassification, use_relative_position_bias=True
    )
    entry = {**CATALOGUE["beit_base_patch16_224"], "sources": {"hf": "microsoft/beit-tiny-224"}}
    monkeypatch.setitem(CATALOGUE, "beit_tiny_test", entry)
    register_catalogue()
    images = _images()
    expected = run(reference, images).logits.numpy()
    ours = keras_beit.BEiTImageClassifier.from_preset("beit_tiny_test")
    assert _max_error(ours(images), expected) <= 1e-4
    theirs = keras_hub.models.ImageClassifier.from_preset("beit_tiny_test")
    assert isinstance(theirs, keras_beit.BEiTImageClassifier)
    assert _max_error(theirs(images), expected) <= 1e-4


def _catalogue_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "presets", "convert_catalogue.py")
    spec = importlib.util.spec_from_file_location("convert_catalogue", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_presets_readme_shows_the_catalogue_as_it_is():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "presets", "README.md")).read()
    table = _catalogue_script().catalogue_table()
    assert table in readme
    assert table.count("\n| `") == len(CATALOGUE) + 1  # every entry and the bundled preset


def test_catalogue_script_converts_and_verifies_each_entry(offline_hub, monkeypatch, tmp_path, capsys):
    offline_hub("microsoft/beit-tiny-224", transformers.BeitForImageClassification, use_relative_position_bias=True)
    entry = {**CATALOGUE["beit_base_patch16_224"], "sources": {"hf": "microsoft/beit-tiny-224"}}
    monkeypatch.setitem(CATALOGUE, "beit_tiny_test", entry)
    script = _catalogue_script()
    assert script.main([str(tmp_path / "out"), "beit_tiny_test"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference against the source implementation (transformers)" in printed
    assert os.path.isfile(tmp_path / "out" / "beit_tiny_test" / "model.weights.h5")
    assert script.main([str(tmp_path / "out"), "beit_tiny_test"]) == 0  # a second run skips it
    assert "already converted" in capsys.readouterr().out


@pytest.mark.parametrize("handle", ["beit_base_patch16_224", "hf://microsoft/beit-base-patch16-224"])
def test_a_handle_the_hub_cannot_serve_says_what_to_load_instead(offline_hub, handle):
    with pytest.raises(OSError) as raised:
        keras_beit.BEiTImageClassifier.from_preset(handle)
    message = str(raised.value)
    assert "Could not fetch 'microsoft/beit-base-patch16-224' from the Hugging Face hub" in message
    assert "a transformers or timm directory" in message and "'beit_tiny_digits'" in message
