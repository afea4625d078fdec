"""Channels-first models: (B, C, H, W) images in and, for segmentation, (B, classes, h, w) logits out.

This is PyTorch's own layout, so every expected value below is transformers' output
as it comes, with no transpose.
"""

import json
import os
import subprocess
import sys
import types

import keras
import keras_hub
import numpy as np
import pytest
import torch
import transformers

import keras_beit
from transformers_reference import save_model

ATOL = 1e-4
SEGMENTATION = dict(
    patch_size=8, num_hidden_layers=4, out_indices=[1, 2, 3, 4], auxiliary_channels=16,
    use_relative_position_bias=True,
)


@pytest.fixture
def channels_first_default():
    """Keras' configured image data format set to channels first, as keras-hub users set it."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format(previous)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _nchw_images(side, batch=2):
    return np.random.default_rng(0).normal(size=(batch, 3, side, side)).astype("float32")


def _reference(images, model, **kwargs):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images), **kwargs)


def test_segmenter_takes_the_configured_default_and_returns_transformers_logits(tmp_path, channels_first_default):
    reference = save_model(transformers.BeitForSemanticSegmentation, tmp_path, image_size=80, **SEGMENTATION)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    images = _nchw_images(80)
    logits = _numpy(segmenter(images))
    assert segmenter.backbone.image_shape == (3, 80, 80)
    assert logits.shape == (2, 5, 40, 40)
    assert np.abs(logits - _reference(images, reference).logits.numpy()).max() <= ATOL


@pytest.mark.parametrize("with_channel_axis", [False, True], ids=["maps", "one_channel_maps"])
def test_segmenter_training_loss_matches_transformers(with_channel_axis, tmp_path, channels_first_default):
    reference = save_model(transformers.BeitForSemanticSegmentation, tmp_path, image_size=80, **SEGMENTATION)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    images = _nchw_images(80)
    labels = np.random.default_rng(1).integers(0, 5, size=(2, 80, 80))
    labels[:, :7] = 255  # ignored pixels
    expected = _reference(images, reference, labels=torch.from_numpy(labels)).loss.item()
    predictions = segmenter(images, return_auxiliary=True)
    if with_channel_axis:
        labels = labels[:, None]  # (B, 1, H, W), a one-channel image in this layout
    loss = segmenter.compute_loss(x=images, y=labels, y_pred=predictions, training=True)
    assert float(_numpy(loss)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("add_fpn", [False, True])
def test_backbone_asked_for_channels_first_gives_beit_backbone_feature_maps(add_fpn, tmp_path):
    reference = save_model(
        transformers.BeitBackbone, tmp_path, use_relative_position_bias=True, num_hidden_layers=4,
        out_indices=[1, 2, 3, 4], add_fpn=add_fpn, image_size=64,
    )
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path), data_format="channels_first")
    images = _nchw_images(64)
    ours = keras.Model(backbone.input, list(backbone.pyramid_outputs.values()))(images)
    for mine, theirs in zip(ours, _reference(images, reference).feature_maps):
        assert _numpy(mine).shape == tuple(theirs.shape)
        assert np.abs(_numpy(mine) - theirs.numpy()).max() <= ATOL


def _segmenter():
    backbone = keras_beit.BEiTBackbone(
        image_shape=(3, 32, 32), patch_size=8, hidden_dim=16, num_layers=4, num_heads=2, intermediate_dim=24,
        use_relative_position_bias=True, out_indices=(0, 1, 2, 3), use_fpn=True, data_format="channels_first",
    )
    return keras_beit.BEiTImageSegmenter(backbone, num_classes=4, auxiliary_channels=8)


def _processor():
    return transformers.BeitImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False, resample=2)


def test_post_process_matches_transformers():
    logits = np.random.default_rng(0).normal(size=(2, 5, 8, 8)).astype("float32")

    outputs = types.SimpleNamespace(logits=torch.from_numpy(logits))
    expected = _processor().post_process_semantic_segmentation(outputs, target_sizes=[(30, 20), (30, 20)])
    ours = _numpy(_segmenter().post_process(logits, target_size=(30, 20)))
    assert ours.shape == (2, 30, 20)
    for mine, theirs in zip(ours, expected):
        assert (mine == theirs.numpy()).mean() > 0.999
    np.testing.assert_array_equal(_numpy(_segmenter().post_process(logits)), logits.argmax(1))


def test_mean_iou_reads_the_classes_from_axis_1():
    labels = np.random.default_rng(0).integers(0, 4, size=(2, 32, 32))
    labels[:, :2] = 255  # ignored pixels
    segmenter = _segmenter()
    segmenter.compile()
    # Logits at the labels' size (nothing to upsample) whose classes are the labels, on axis 1.
    logits = np.eye(4, dtype="float32")[np.where(labels == 255, 0, labels)].transpose(0, 3, 1, 2)
    metrics = segmenter.compute_metrics(None, labels, logits)
    assert float(_numpy(metrics["mean_iou"])) == pytest.approx(1.0)


def test_preprocessor_matches_beit_image_processor():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    maps = rng.integers(0, 6, size=(2, 32, 32)).astype("uint8")
    expected = _processor()(list(images), segmentation_maps=list(maps), return_tensors="np")
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(
        keras_beit.BEiTImageConverter(image_size=(32, 32), data_format="channels_first")
    )
    pixels, labels = preprocessor(images.transpose(0, 3, 1, 2).astype("float32"), maps.astype("int32"))
    np.testing.assert_allclose(_numpy(pixels), expected["pixel_values"], atol=1e-5)
    np.testing.assert_array_equal(_numpy(labels), expected["labels"])


@pytest.mark.parametrize("layer_cls", [keras_beit.layers.conv.Conv2D, keras_beit.layers.conv.Conv2DTranspose])
def test_bias_goes_on_the_channel_axis_when_the_width_equals_the_channels(layer_cls):
    # Keras' tensorflow `add` puts a (1, C, 1, 1) bias on the last axis in this case.
    layer = layer_cls(4, 1, bias_initializer="random_normal", kernel_initializer="zeros", data_format="channels_first")
    outputs = _numpy(layer(np.ones((1, 3, 4, 4), "float32")))
    bias = _numpy(layer.bias)
    np.testing.assert_allclose(outputs, np.broadcast_to(bias[None, :, None, None], (1, 4, 4, 4)), atol=1e-6)


def test_converted_task_builds_its_image_converter_in_the_backbone_layout(tmp_path):
    save_model(transformers.BeitForSemanticSegmentation, tmp_path, image_size=80, **SEGMENTATION)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(
        str(tmp_path), tap_points="transformers", data_format="channels_first"
    )
    assert segmenter.backbone.data_format == "channels_first"
    assert segmenter.preprocessor.image_converter.data_format == "channels_first"


def test_image_converter_config_keeps_its_layout():
    converter = keras_beit.BEiTImageConverter(image_size=(32, 32), data_format="channels_first")
    assert keras_beit.BEiTImageConverter.from_config(converter.get_config()).data_format == "channels_first"


def test_a_saved_channels_last_preset_stays_channels_last_under_that_default(channels_first_default):
    classifier = keras_beit.BEiTImageClassifier.from_preset("beit_tiny_digits")
    assert classifier.backbone.data_format == "channels_last"
    assert classifier.preprocessor.image_converter.data_format == "channels_last"
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype("float32")
    assert _numpy(classifier(classifier.preprocessor(images))).shape == (2, 10)


@pytest.mark.parametrize("cls", [keras_beit.BEiTBackbone, keras_beit.BEiTImageClassifier, keras_hub.models.Backbone])
def test_asking_a_saved_preset_for_another_layout_says_where_data_format_applies(cls):
    # The saved (32, 32, 3) image shape read channels first was "an image width of 3".
    with pytest.raises(ValueError, match="saved channels_last, and it loads that way"):
        cls.from_preset("beit_tiny_digits", data_format="channels_first")


def test_segmentation_loss_follows_the_configured_default(channels_first_default):
    assert keras_beit.BEiTSegmentationLoss().data_format == "channels_first"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="oneDNN's switch belongs to tensorflow")
def test_tensorflow_convolves_channels_first_on_a_cpu_without_onednn():
    # With oneDNN's ops off (AVX2 machines, or TF_ENABLE_ONEDNN_OPTS=0) TensorFlow's CPU Conv2D and
    # its transpose refuse NCHW inputs; the switch is read when TensorFlow is imported.
    script = os.path.join(os.path.dirname(__file__), "scripts", "channels_first_convolutions.py")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"}
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(errors) == {"Conv2D", "Conv2DTranspose", "ConvBNReLU parts"}
    assert max(errors.values()) < 1e-4, errors
