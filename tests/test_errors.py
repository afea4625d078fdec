"""Bad input is refused with an error that says what was wrong and what was expected."""

import json

import numpy as np
import pytest
import transformers

import keras_beit
from keras_beit.convert.weights import CheckpointMismatchError
from transformers_reference import save_model

TINY = dict(image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=24)


@pytest.fixture(scope="module")
def backbone():
    return keras_beit.BEiTBackbone(use_relative_position_bias=True, **TINY)


def test_wrong_channel_count_names_the_expected_channels(backbone):
    flexible = keras_beit.BEiTBackbone(**{**TINY, "image_shape": (None, None, 3), "window_size": (4, 4)})
    with pytest.raises(ValueError, match="3-channel"):
        flexible(np.zeros((1, 32, 32, 1), "float32"))


def test_wrong_rank_names_the_expected_rank(backbone):
    with pytest.raises(ValueError, match="rank 4"):
        backbone.patch_embedding(np.zeros((32, 32, 3), "float32"))


def test_image_size_not_divisible_by_the_patch_size_is_refused():
    flexible = keras_beit.BEiTBackbone(**{**TINY, "image_shape": (None, None, 3), "window_size": (4, 4)})
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        flexible(np.zeros((1, 36, 32, 3), "float32"))
    with pytest.raises(ValueError, match=r"multiple of the patch size \(8\)"):
        keras_beit.BEiTBackbone(**{**TINY, "image_shape": (30, 32, 3)})


def test_image_size_not_divisible_is_refused_inside_a_function_traced_for_any_size():
    # tensorflow retraces predict with unknown sizes once it has seen two of them;
    # a strided patch convolution would then silently drop the remainder.
    flexible = keras_beit.BEiTBackbone(**{**TINY, "image_shape": (None, None, 3), "window_size": (4, 4)})
    classifier = keras_beit.BEiTImageClassifier(flexible, num_classes=3)
    for side in (32, 40):
        classifier.predict(np.zeros((1, side, side, 3), "float32"), verbose=0)
    with pytest.raises(Exception, match=r"height must be a multiple of the patch size 8; received images of shape"):
        classifier.predict(np.zeros((1, 36, 37, 3), "float32"), verbose=0)


def test_unknown_image_size_needs_the_position_grid():
    with pytest.raises(ValueError, match="window_size"):
        keras_beit.BEiTBackbone(**{**TINY, "image_shape": (None, None, 3)})


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        keras_beit.BEiTBackbone(**{**TINY, "num_heads": 3})


def test_masked_image_modeler_needs_a_mask_token(backbone):
    with pytest.raises(ValueError, match="use_mask_token=True"):
        keras_beit.BEiTMaskedImageModeler(backbone, vocabulary_size=10)


def test_a_mask_of_the_wrong_length_names_the_patch_count():
    backbone = keras_beit.BEiTBackbone(**{**TINY, "use_mask_token": True})
    modeler = keras_beit.BEiTMaskedImageModeler(backbone, vocabulary_size=10)
    images = np.zeros((1, 32, 32, 3), "float32")
    # Keras' own input check or ours, whichever sees it first: both name the mask and its 16 entries.
    with pytest.raises(ValueError, match=r"(?s)mask.*16"):
        modeler({"images": images, "mask": np.zeros((1, 15), "bool")})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("beit")
    save_model(transformers.BeitForImageClassification, directory, use_relative_position_bias=True)
    return directory


def _rewrite(directory, target, edit):
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    target.mkdir()
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text((directory / "config.json").read_text())
    return str(target)


def test_missing_keys_are_named(checkpoint, tmp_path):
    key = "beit.encoder.layer.1.attention.attention.key.weight"
    broken = _rewrite(checkpoint, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(CheckpointMismatchError, match=r"Missing keys \(1\): " + key.replace(".", r"\.")):
        keras_beit.BEiTImageClassifier.from_preset(broken)


def test_unexpected_keys_are_named(checkpoint, tmp_path):
    def add(tensors):
        tensors["beit.encoder.layer.0.attention.attention.key.bias"] = np.zeros(32, "float32")

    broken = _rewrite(checkpoint, tmp_path / "unexpected", add)
    with pytest.raises(CheckpointMismatchError, match=r"Unexpected keys \(1\): beit\.encoder\.layer\.0\.attention\.attention\.key\.bias"):
        keras_beit.BEiTImageClassifier.from_preset(broken)


def test_misshaped_keys_are_named_with_both_shapes(checkpoint, tmp_path):
    def shrink(tensors):
        tensors["classifier.bias"] = np.zeros(4, "float32")

    broken = _rewrite(checkpoint, tmp_path / "misshaped", shrink)
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.bias: checkpoint \(4,\), model expects \(5,\)"):
        keras_beit.BEiTImageClassifier.from_preset(broken)


def test_relative_position_index_buffers_in_old_checkpoints_are_skipped(checkpoint, tmp_path):
    def add(tensors):
        tensors["beit.encoder.layer.0.attention.attention.relative_position_bias.relative_position_index"] = np.zeros((17, 17), "int64")

    old = _rewrite(checkpoint, tmp_path / "old", add)
    keras_beit.BEiTImageClassifier.from_preset(old)


def test_base_model_checkpoint_needs_num_classes_for_a_classifier(tmp_path):
    save_model(transformers.BeitModel, tmp_path, use_relative_position_bias=True)
    with pytest.raises(ValueError, match="pass num_classes"):
        keras_beit.BEiTImageClassifier.from_preset(str(tmp_path))
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path), num_classes=7)
    assert classifier.output_dense.units == 7


def test_transformers_tap_points_past_the_last_block_point_to_the_transformers_reading(tmp_path):
    # Valid in transformers (it taps hidden_states[i - 1]), not as the original's block numbers.
    save_model(
        transformers.BeitForSemanticSegmentation, tmp_path, num_hidden_layers=6, out_indices=[2, 3, 4, 6],
        use_relative_position_bias=True, auxiliary_channels=8, image_size=32, patch_size=8,
    )
    message = r"out_indices \[2, 3, 4, 6\] name blocks past the last of 6.*tap_points=\"transformers\""
    with pytest.raises(ValueError, match=message):
        keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path))
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    assert tuple(segmenter.backbone.out_indices) == (0, 1, 2, 4)


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"beit.embeddings.cls_token": Exploit()}, f)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "beit", "architectures": ["BeitModel"]}))
    with pytest.raises(ValueError, match="Refusing to load"):
        keras_beit.BEiTBackbone.from_preset(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("labels", [[0, 1, 2, 5], [0, -1, 1, 2]])
def test_class_labels_out_of_range_are_refused_in_fit(backbone, labels):
    classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
    with pytest.raises(Exception, match=r"Labels must be class indices in \[0, 3\)"):
        classifier.fit(np.zeros((4, 32, 32, 3), "float32"), np.array(labels), verbose=0)


def test_visual_token_labels_out_of_range_are_refused_in_fit():
    mim = keras_beit.BEiTMaskedImageModeler(
        keras_beit.BEiTBackbone(use_mask_token=True, **TINY), vocabulary_size=10
    )
    x = {"images": np.zeros((2, 32, 32, 3), "float32"), "mask": np.ones((2, 16), bool)}
    with pytest.raises(Exception, match=r"Labels must be class indices in \[0, 10\)"):
        mim.fit(x, np.full((2, 16), 10), verbose=0)
