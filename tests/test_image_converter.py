"""BEiTImageConverter and its classifier preprocessor, specified against
transformers' BeitImageProcessor.

Without torchvision, `transformers.BeitImageProcessor` resolves to
`BeitImageProcessorPil` (with a warning), so the PIL class is used directly. It
resizes the uint8 image with PIL, which rounds to uint8 after each of its two
passes (one axis, then the other), then computes `(x / 255 - mean) / std`.
The converter does the same for uint8 images and resizes float images in one
float pass; either way a resize agrees to within one 8-bit level, 2 / 255
after normalization with std 0.5, and with no resize the two agree to float
precision.
"""

import keras
import numpy as np
import pytest
import transformers
from PIL import Image

import keras_beit
from keras_beit.convert.transformers import image_converter_config

ONE_STEP = 0.0079  # one 8-bit level, 2 / 255 = 0.00784, after (x / 255 - 0.5) / 0.5

# A BeitImageProcessor config as the official checkpoints publish it.
OFFICIAL_PROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": False,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}


def beit_image_processor(**kwargs):
    """The official checkpoints' settings: bilinear to 224 x 224, no crop."""
    kwargs = {"size": {"height": 224, "width": 224}, "resample": 2, "do_center_crop": False, **kwargs}
    return transformers.BeitImageProcessorPil(**kwargs)


def reference(images, processor=None):
    """The processor's pixel_values, channels last."""
    processor = processor or beit_image_processor()
    pixel_values = processor(list(images), return_tensors="np")["pixel_values"]
    return pixel_values.transpose(0, 2, 3, 1)


def convert(converter, images):
    return keras.ops.convert_to_numpy(converter(images.astype("float32")))


def random_image(height, width, seed=0):
    """Uniform uint8 noise: every pixel independent, the hardest case to resize."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3)).astype("uint8")


def box_blur(image, size=7, passes=3):
    """Repeated box filter along both axes (close to a Gaussian), edges replicated."""
    image = image.astype("float64")
    for _ in range(passes):
        for axis in (0, 1):
            padding = [(0, 0)] * image.ndim
            padding[axis] = (size // 2, size // 2)
            windows = np.lib.stride_tricks.sliding_window_view(
                np.pad(image, padding, mode="edge"), size, axis=axis
            )
            image = windows.mean(axis=-1)
    return image


def natural_image(height, width, seed=0):
    """Smooth colour gradients plus blurred texture: a photograph-like uint8 image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    gradients = np.stack([200 * x, 180 * y, 120 * (1 - x) * y + 60], axis=-1)
    texture = box_blur(rng.normal(0, 40, size=(height, width, 3)))
    return np.clip(gradients + texture, 0, 255).round().astype("uint8")


def pil_float_resize(image, size=(224, 224)):
    """PIL's bilinear resize done in float ("F" mode), with no uint8 rounding."""
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype("float32"), mode="F").resize(size, Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def test_without_resizing_the_converter_matches_the_processor_to_1e_5():
    images = np.stack([random_image(224, 224, seed) for seed in (0, 1)])
    difference = np.abs(convert(keras_beit.BEiTImageConverter(), images) - reference(images))
    print(f"224x224 no resize: mean {difference.mean():.2e}, max {difference.max():.2e}")
    assert difference.max() <= 1e-5


RESIZE_CASES = {
    "downscale 300x260 natural": lambda: natural_image(300, 260),
    "downscale 300x260 noise": lambda: random_image(300, 260),
    "upscale 150x180 natural": lambda: natural_image(150, 180),
    "upscale 150x180 noise": lambda: random_image(150, 180),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_bilinear_resize_matches_the_processor_within_one_8_bit_step(case):
    images = RESIZE_CASES[case]()[None]
    difference = np.abs(convert(keras_beit.BEiTImageConverter(), images) - reference(images))
    print(f"{case} -> 224: mean {difference.mean():.2e}, max {difference.max():.2e}")
    assert difference.max() <= ONE_STEP


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_bilinear_resize_differs_from_pil_only_by_its_8_bit_rounding(case):
    # Against PIL's own filter run in float, with nothing rounded, the converter
    # (antialiased bilinear, like PIL when it shrinks) agrees far inside one level.
    image = RESIZE_CASES[case]()
    expected = (pil_float_resize(image) / 255 - 0.5) / 0.5
    difference = np.abs(convert(keras_beit.BEiTImageConverter(), image[None])[0] - expected)
    print(f"{case} -> 224 vs float PIL: mean {difference.mean():.2e}, max {difference.max():.2e}")
    assert difference.max() <= 1e-4


def test_mean_and_std_are_configurable():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = random_image(224, 224, seed=2)[None]
    converter = keras_beit.BEiTImageConverter(mean=mean, std=std)
    expected = reference(images, beit_image_processor(image_mean=list(mean), image_std=list(std)))
    assert np.abs(convert(converter, images) - expected).max() <= 1e-5


def test_official_processor_config_gives_224_bilinear_and_half_mean_std():
    config = image_converter_config(OFFICIAL_PROCESSOR_CONFIG)
    assert config["image_size"] == (224, 224)
    assert config["interpolation"] == "bilinear"
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)


def test_processor_config_resample_3_gives_bicubic():
    config = image_converter_config({**OFFICIAL_PROCESSOR_CONFIG, "resample": 3})
    assert config["interpolation"] == "bicubic"


def test_processor_config_size_may_be_a_height_width_dict():
    config = image_converter_config({**OFFICIAL_PROCESSOR_CONFIG, "size": {"height": 384, "width": 384}})
    assert config["image_size"] == (384, 384)


def test_converter_from_official_config_matches_processor_from_the_same_config():
    converter = keras_beit.BEiTImageConverter(**image_converter_config(OFFICIAL_PROCESSOR_CONFIG))
    processor = transformers.BeitImageProcessorPil.from_dict(OFFICIAL_PROCESSOR_CONFIG)
    images = natural_image(300, 260, seed=3)[None]
    assert np.abs(convert(converter, images) - reference(images, processor)).max() <= ONE_STEP


def test_classifier_preprocessor_normalizes_images_and_passes_labels_through():
    preprocessor = keras_beit.BEiTImageClassifierPreprocessor(keras_beit.BEiTImageConverter(image_size=(32, 32)))
    images = np.stack([random_image(32, 32, seed) for seed in (4, 5)])
    labels = np.array([3, 998])
    pixels, labels_out = preprocessor(images.astype("float32"), labels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pixels), images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(labels_out), labels)


def test_config_round_trip_keeps_size_normalization_and_interpolation():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    converter = keras_beit.BEiTImageConverter(image_size=(64, 48), mean=mean, std=std, interpolation="bicubic")
    clone = keras_beit.BEiTImageConverter.from_config(converter.get_config())
    assert clone.image_size == (64, 48)
    assert clone.interpolation == "bicubic" and clone.antialias
    # Normalization, checked where no resize happens: (x / 255 - mean) / std.
    square = random_image(64, 48, seed=6)[None]
    np.testing.assert_allclose(convert(clone, square), (square / 255 - mean) / std, atol=1e-5)
    # Resizing: the clone does exactly what the original does.
    larger = random_image(80, 70, seed=7)[None]
    np.testing.assert_allclose(convert(clone, larger), convert(converter, larger), atol=1e-6)


def test_center_crop_after_resizing_matches_the_processor():
    # Resize to 40 x 40, then keep rows and columns 4..35, as do_center_crop does.
    settings = dict(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True)
    processor = transformers.BeitImageProcessorPil(resample=2, **settings)
    converter = keras_beit.BEiTImageConverter(**image_converter_config(processor.to_dict()))
    assert converter.crop_size == (32, 32)
    images = np.stack([natural_image(50, 60, seed) for seed in (7, 8)])
    pixels = convert(converter, images)
    assert pixels.shape == (2, 32, 32, 3)
    assert np.abs(pixels - reference(images, processor)).max() <= ONE_STEP


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_center_crop_takes_the_same_window_of_segmentation_maps(data_format):
    # Without resizing, the crop is exact: rows 2..5 and columns 1..4 of a 8 x 6 map.
    converter = keras_beit.BEiTImageConverter(image_size=(8, 6), crop_size=(4, 4), data_format=data_format)
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(converter)
    maps = np.arange(2 * 8 * 6).reshape(2, 8, 6).astype("int32")
    images = np.zeros((2, 8, 6, 3) if data_format == "channels_last" else (2, 3, 8, 6), "float32")
    pixels, labels = preprocessor(images, maps)
    expected_shape = (2, 4, 4, 3) if data_format == "channels_last" else (2, 3, 4, 4)
    assert keras.ops.convert_to_numpy(pixels).shape == expected_shape
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(labels), maps[:, 2:6, 1:5])


def test_processor_without_rescaling_feeds_pixels_as_they_are():
    # do_rescale=False: (x - mean) / std on the raw values.
    processor = transformers.BeitImageProcessorPil(
        size={"height": 32, "width": 32}, do_center_crop=False, do_rescale=False
    )
    converter = keras_beit.BEiTImageConverter(**image_converter_config(processor.to_dict()))
    images = np.stack([random_image(32, 32, seed) for seed in (9, 10)])
    expected = reference(images, processor)
    assert np.abs(expected).max() > 100  # the raw 0..255 scale, not rescaled
    np.testing.assert_allclose(convert(converter, images), expected, atol=1e-3)


def test_a_crop_larger_than_the_resized_image_is_refused():
    with pytest.raises(ValueError, match=r"crop_size \(48, 48\) must fit inside the resized image_size \(40, 40\)"):
        keras_beit.BEiTImageConverter(image_size=(40, 40), crop_size=(48, 48))


def document_image(height, width, seed=0):
    """Black strokes on white, as a scanned page: bicubic overshoots at every edge."""
    rng = np.random.default_rng(seed)
    page = np.full((height, width), 255, "uint8")
    for _ in range(height * width // 2000 + 5):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 8)
        page[top:top + rng.integers(2, 6), left:left + rng.integers(4, 30)] = 0
    return np.repeat(page[..., None], 3, axis=-1)


def bicubic_processor(side=224):
    return transformers.BeitImageProcessorPil(size={"height": side, "width": side}, resample=3, do_center_crop=False)


# Landscape (PIL starts with the width), portrait shrinking height much more (PIL 13 starts with the height), upscale.
PAGE_SHAPES = [(480, 640), (640, 200), (100, 90)]


@pytest.mark.parametrize("shape", PAGE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bicubic_resize_of_8_bit_pages_matches_the_processor_within_one_step(shape):
    # PIL rounds and clips to 0..255 after each axis; one float pass is up to ~20 levels off at the strokes.
    processor = bicubic_processor()
    converter = keras_beit.BEiTImageConverter(**image_converter_config(processor.to_dict()))
    page = document_image(*shape)[None]
    pixels = keras.ops.convert_to_numpy(converter(page))  # uint8 in, as a decoded file arrives
    assert np.abs(pixels - reference(page, processor)).max() <= ONE_STEP


def test_8_bit_pages_resize_the_same_inside_a_tf_data_pipeline():
    import tensorflow as tf

    processor = bicubic_processor(side=64)
    converter = keras_beit.BEiTImageConverter(**image_converter_config(processor.to_dict()))
    pages = [document_image(*shape, seed=i) for i, shape in enumerate(PAGE_SHAPES)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(pages), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(converter)
    for page, pixels in zip(pages, dataset):
        assert np.abs(pixels.numpy() - reference(page[None], processor)[0]).max() <= ONE_STEP


def test_processor_config_resample_0_gives_nearest():
    assert image_converter_config({**OFFICIAL_PROCESSOR_CONFIG, "resample": 0})["interpolation"] == "nearest"


@pytest.mark.parametrize("resample", [1, 4, 5], ids=["lanczos", "box", "hamming"])
def test_a_resample_filter_without_a_keras_equivalent_is_refused(resample):
    with pytest.raises(ValueError, match=rf"resample={resample}; BEiTImageConverter supports PIL's NEAREST \(0\)"):
        image_converter_config({**OFFICIAL_PROCESSOR_CONFIG, "resample": resample})


def test_an_aspect_keeping_shortest_edge_size_is_refused():
    # BeitImageProcessor would resize 37 x 61 to 32 x 52, not to 32 x 32.
    with pytest.raises(ValueError, match=r"size \{'shortest_edge': 32\}.*fixed height and width"):
        image_converter_config({**OFFICIAL_PROCESSOR_CONFIG, "size": {"shortest_edge": 32}})


def test_without_resizing_segmentation_maps_keep_their_size_and_are_reduced():
    # do_resize false: transformers returns each map at its own size, labels reduced.
    converter = keras_beit.BEiTImageConverter(image_size=None)
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(converter, reduce_labels=True)
    maps = np.array([[[0, 1, 2], [150, 255, 7]]], "uint8")
    pixels, labels = preprocessor(np.zeros((1, 2, 3, 3), "float32"), maps)
    assert keras.ops.convert_to_numpy(pixels).shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(labels), [[[255, 0, 1], [149, 255, 6]]])


def test_predict_resizes_8_bit_images_in_its_pipeline_as_the_processor_does():
    # predict() maps the preprocessor over a tf.data pipeline, where the image sizes are static.
    processor = transformers.BeitImageProcessorPil(size={"height": 32, "width": 32}, resample=3, do_center_crop=False)
    converter = keras_beit.BEiTImageConverter(**image_converter_config(processor.to_dict()))
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=24
    )
    classifier = keras_beit.BEiTImageClassifier(
        backbone, num_classes=3, preprocessor=keras_beit.BEiTImageClassifierPreprocessor(converter)
    )
    pages = np.stack([document_image(96, 40, seed) for seed in (0, 1)])  # height shrinks most: height first
    expected = keras.ops.convert_to_numpy(classifier(reference(pages, processor)))
    np.testing.assert_allclose(classifier.predict(pages, verbose=0), expected, atol=1e-4)


# keep_aspect_ratio: timm's and the original code's evaluation transform, torchvision's Resize(shorter side)
# then CenterCrop on a PIL image, written out here with PIL and torchvision's documented arithmetic.
def torchvision_resize_and_center_crop(image, shorter_side, crop, resample=Image.BICUBIC):
    height, width = image.shape[:2]
    if width <= height:
        size = (shorter_side, int(shorter_side * height / width))  # (width, height), as PIL takes it
    else:
        size = (int(shorter_side * width / height), shorter_side)
    resized = Image.fromarray(image).resize(size, resample)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)))
    return (pixels / 255 - 0.5) / 0.5


def keep_aspect_converter(shorter_side=35, crop=32, **kwargs):
    return keras_beit.BEiTImageConverter(
        image_size=(shorter_side, shorter_side), crop_size=(crop, crop), keep_aspect_ratio=True,
        interpolation="bicubic", **kwargs,
    )


# PIL filters 8-bit images in fixed point and Keras in float, so a value near a half can round the other way
# in both passes: two levels at one pixel of 3072 for the portrait below. A window one pixel off is 6 levels off.
TWO_STEPS = 2 * ONE_STEP

# Landscape whose long side (53) leaves an odd margin of 21 (offset 10.5 rounds to 10), portrait with
# a margin of 25 (12.5 rounds to 12), an upscale, and a square image.
KEEP_ASPECT_SHAPES = [(60, 91), (50, 40), (20, 30), (70, 70)]


@pytest.mark.parametrize("shape", KEEP_ASPECT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_keep_aspect_ratio_resizes_the_shorter_side_and_crops_the_centre_as_torchvision(shape):
    image = natural_image(*shape, seed=11)
    pixels = keras.ops.convert_to_numpy(keep_aspect_converter()(image[None]))[0]
    assert pixels.shape == (32, 32, 3)
    assert np.abs(pixels - torchvision_resize_and_center_crop(image, 35, 32)).max() <= TWO_STEPS


def test_keep_aspect_ratio_takes_the_same_window_inside_a_tf_data_pipeline():
    import tensorflow as tf

    converter = keep_aspect_converter()
    images = [natural_image(*shape, seed=i) for i, shape in enumerate(KEEP_ASPECT_SHAPES)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(converter)
    for image, pixels in zip(images, dataset):
        assert np.abs(pixels.numpy() - torchvision_resize_and_center_crop(image, 35, 32)).max() <= TWO_STEPS


def test_keep_aspect_ratio_to_a_non_square_size_rounds_as_timm_resize_keep_ratio():
    # timm's ResizeKeepRatio for a (35, 28) target: ratio min(60 / 35, 91 / 28) = 60 / 35, so the image
    # becomes 35 x round(91 * 35 / 60) = 35 x 53; a (32, 24) crop then starts at rows 2 (1.5, to even)
    # and columns round(14.5) = 14. Without a resize (float ramp, cover size equal), the crop is exact.
    converter = keras_beit.BEiTImageConverter(
        image_size=(35, 28), crop_size=(32, 24), keep_aspect_ratio=True, mean=(0, 0, 0), std=(1, 1, 1),
        rescale_factor=1,
    )
    ramp = np.arange(35 * 53, dtype="float32").reshape(35, 53, 1).repeat(3, axis=-1)
    pixels = keras.ops.convert_to_numpy(converter(ramp[None]))[0]
    np.testing.assert_array_equal(pixels, ramp[2:34, 14:38])
    image = np.zeros((60, 91, 3), "float32")
    assert keras.ops.convert_to_numpy(converter(image[None])).shape == (1, 32, 24, 3)


def test_keep_aspect_ratio_survives_the_config_round_trip():
    clone = keras_beit.BEiTImageConverter.from_config(keep_aspect_converter().get_config())
    image = natural_image(60, 91, seed=12)[None]
    assert clone.keep_aspect_ratio and clone.crop_size == (32, 32)
    np.testing.assert_array_equal(convert(clone, image), convert(keep_aspect_converter(), image))


def test_keep_aspect_ratio_without_a_crop_size_is_refused():
    with pytest.raises(ValueError, match=r"keep_aspect_ratio=True needs a crop_size.*received crop_size=None"):
        keras_beit.BEiTImageConverter(image_size=(35, 35), keep_aspect_ratio=True)


def test_a_segmenter_preprocessor_refuses_a_keep_aspect_ratio_converter():
    with pytest.raises(ValueError, match=r"resizes maps to the converter's fixed image_size.*keep_aspect_ratio=True"):
        keras_beit.BEiTImageSegmenterPreprocessor(keep_aspect_converter())
