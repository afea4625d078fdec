"""BEiTImageConverter and the classifier preprocessor against transformers' BeitImageProcessor."""

import keras
import numpy as np
import pytest
import transformers

import keras_beit
from keras_beit.convert.transformers import image_converter_config

ONE_STEP = 2 / 255  # one 8-bit level after (x / 255 - 0.5) / 0.5


def _processor(size=224, **kwargs):
    return transformers.BeitImageProcessorPil(
        size={"height": size, "width": size}, resample=2, do_center_crop=False, **kwargs
    )


def _reference(images, **kwargs):
    out = _processor(**kwargs)(list(images), return_tensors="np")["pixel_values"]
    return out.transpose(0, 2, 3, 1)


def _ours(images, **kwargs):
    converter = keras_beit.BEiTImageConverter(**kwargs)
    return keras.ops.convert_to_numpy(converter(images.astype("float32")))


def _smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([np.sin(3 * x + rng.uniform()), np.cos(2 * y), x * y], -1)
    return ((image - image.min()) / (image.max() - image.min()) * 255).round().astype("uint8")


def test_no_resize_matches_to_1e_5():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3)).astype("uint8")
    assert np.abs(_ours(images) - _reference(images)).max() <= 1e-5


@pytest.mark.parametrize("shape", [(300, 260), (150, 180)], ids=["downscale", "upscale"])
def test_bilinear_resize_is_within_one_8_bit_step(shape):
    images = _smooth_image(*shape)[None]
    difference = np.abs(_ours(images) - _reference(images))
    print(f"{shape} -> 224: mean {difference.mean():.2e}, max {difference.max():.2e}")
    assert difference.max() <= ONE_STEP + 1e-6


def test_configurable_mean_and_std_match():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = np.random.default_rng(1).integers(0, 256, size=(1, 224, 224, 3)).astype("uint8")
    expected = _reference(images, image_mean=list(mean), image_std=list(std))
    assert np.abs(_ours(images, mean=mean, std=std) - expected).max() <= 1e-5


def test_official_processor_config_maps_to_converter_arguments():
    official = {
        "crop_size": 224, "do_center_crop": False, "do_normalize": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224,
    }
    config = image_converter_config(official)
    assert config["image_size"] == (224, 224) and config["interpolation"] == "bilinear"
    assert image_converter_config({**official, "resample": 3})["interpolation"] == "bicubic"
    assert image_converter_config({**official, "size": {"height": 384, "width": 384}})["image_size"] == (384, 384)


def test_classifier_preprocessor_normalizes_images_and_passes_labels():
    preprocessor = keras_beit.BEiTImageClassifierPreprocessor(keras_beit.BEiTImageConverter(image_size=(32, 32)))
    images = np.full((2, 32, 32, 3), 255.0, "float32")
    pixels, labels = preprocessor(images, np.array([3, 1]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pixels), 1.0, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(labels), [3, 1])


def test_converter_survives_a_config_round_trip():
    converter = keras_beit.BEiTImageConverter(image_size=(64, 48), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    clone = keras_beit.BEiTImageConverter.from_config(converter.get_config())
    images = np.random.default_rng(2).integers(0, 256, size=(1, 80, 70, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(images)), keras.ops.convert_to_numpy(converter(images)), atol=1e-6
    )
