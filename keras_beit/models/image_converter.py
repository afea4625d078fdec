"""BEiTImageConverter: resize, rescale and normalize images for BEiT."""

import keras
import numpy as np
from keras_hub.layers import ImageConverter

from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.preset_loading import routed_from_preset

# Every official BEiT v1, DiT and data2vec-vision checkpoint uses mean = std = 0.5.
BEIT_MEAN = (0.5, 0.5, 0.5)
BEIT_STD = (0.5, 0.5, 0.5)


def round_half_even(numerator, denominator):
    """Python's round(numerator / denominator) for non-negative integers,
    in integer arithmetic only, so also for the tf tensors of a tf.data graph."""
    doubled = 2 * numerator + denominator
    rounded_up = doubled // (2 * denominator)  # halves rounded up
    at_half = (2 * denominator - doubled % (2 * denominator)) // (2 * denominator)  # 1 exactly at a half
    return rounded_up - at_half * (rounded_up % 2)


class PillowResizing(keras.layers.Resizing):
    """Resizing that resizes uint8 images as PIL does.

    BeitImageProcessor and the original fine-tuning code resize 8-bit images
    with PIL, which filters one axis at a time and rounds and clips to 0..255
    after each pass. Bicubic overshoot at sharp edges (text, documents) is
    therefore clipped between the passes; a single float pass leaves up to
    about 20 levels of difference there. PIL 13 filters the height first
    when it shrinks by more than twice as many pixels as the width (earlier
    PIL always starts with the width); this follows PIL 13. Float images, and
    nearest-neighbour resizing, take Keras' usual single pass.

    With `keep_aspect_ratio_crop` set to a (height, width) crop, images are
    resized and cropped as timm's and the original code's evaluation
    transform does it (torchvision's `Resize` then `CenterCrop` on a PIL
    image): scaled, keeping their aspect ratio, just enough to cover
    (self.height, self.width), then the crop is cut from the centre, its
    offsets rounded half to even as Python's round().
    """

    eight_bit = False
    keep_aspect_ratio_crop = None

    def __call__(self, inputs, **kwargs):
        # Read before Keras' data layer casts inputs to float inside a tf.data graph.
        first = inputs["images"] if isinstance(inputs, dict) else inputs
        self.eight_bit = keras.backend.standardize_dtype(first.dtype) == "uint8"
        return super().__call__(inputs, **kwargs)

    def _covering_size(self, height, width):
        """The size that covers (self.height, self.width) at the image's aspect ratio.

        One side fills its target; the other is truncated, as torchvision's
        Resize(int) computes it for a square target, or rounded half to even
        for another, as timm's ResizeKeepRatio does.
        """

        def scaled(size, numerator, denominator):
            if self.height == self.width:
                return size * numerator // denominator
            return round_half_even(size * numerator, denominator)

        if isinstance(height, int) and isinstance(width, int):
            if height * self.width <= width * self.height:
                return self.height, scaled(width, self.height, height)
            return scaled(height, self.width, width), self.width
        height_fills = self.backend.numpy.less_equal(height * self.width, width * self.height)
        return (
            self.backend.numpy.where(height_fills, self.height, scaled(height, self.width, width)),
            self.backend.numpy.where(height_fills, scaled(width, self.height, height), self.width),
        )

    def _center_crop(self, images, height, width):
        crop_height, crop_width = self.keep_aspect_ratio_crop
        top, left = round_half_even(height - crop_height, 2), round_half_even(width - crop_width, 2)
        rows, columns = slice(top, top + crop_height), slice(left, left + crop_width)
        if self.data_format == "channels_first":
            return images[..., rows, columns]
        return images[..., rows, columns, :]

    def _transform_images(self, images, transformation, interpolation):
        height, width = transformation
        if self.keep_aspect_ratio_crop is None:
            target = (self.height, self.width)
        else:
            target = self._covering_size(height, width)
        resized = self._resize(images, (height, width), target, interpolation)
        if self.keep_aspect_ratio_crop is None:
            return resized
        return self._center_crop(resized, *target)

    def _resize(self, images, size, target, interpolation):
        ops = self.backend
        pil_like = (
            self.eight_bit
            and interpolation in ("bilinear", "bicubic")
            and self.antialias  # PIL widens the filter when it shrinks
            and not (self.crop_to_aspect_ratio or self.pad_to_aspect_ratio)
        )
        if not pil_like:
            if self.keep_aspect_ratio_crop is None:
                return super()._transform_images(images, size, interpolation)
            resized = ops.image.resize(
                images, target, interpolation=interpolation, antialias=self.antialias, data_format=self.data_format
            )
            dtype = keras.backend.standardize_dtype(images.dtype)
            if keras.backend.standardize_dtype(resized.dtype) == dtype:
                return resized
            if "int" in dtype:  # rounded and saturated, as Keras' Resizing returns integer images
                limits = np.iinfo(dtype)
                resized = ops.numpy.clip(ops.numpy.round(resized), limits.min, limits.max)
            return ops.cast(resized, dtype)
        (height, width), (target_height, target_width) = size, target

        def one_pass(x, size):
            x = ops.image.resize(x, size, interpolation=interpolation, antialias=True, data_format=self.data_format)
            return ops.numpy.clip(ops.numpy.floor(x + 0.5), 0, 255)  # PIL rounds halves up

        def width_first():
            return one_pass(one_pass(floats, (height, target_width)), (target_height, target_width))

        def height_first():
            return one_pass(one_pass(floats, (target_height, width)), (target_height, target_width))

        floats = ops.cast(images, "float32")
        height_shrink, width_shrink = height - target_height, width - target_width
        if all(isinstance(n, int) for n in (height, width, target_height, target_width)):
            resized = height_first() if 0 < height_shrink and 2 * width_shrink < height_shrink else width_first()
        else:  # sizes known only when a tf.data graph runs
            starts_with_height = ops.numpy.logical_and(height_shrink > 0, height_shrink > 2 * width_shrink)
            resized = ops.core.cond(starts_with_height, height_first, width_first)
        return ops.cast(resized, images.dtype)


def normalization(mean=BEIT_MEAN, std=BEIT_STD, rescale_factor=1 / 255):
    """keras-hub's (scale, offset) for `(x * rescale_factor - mean) / std`."""
    scale = [rescale_factor / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageConverter(ImageConverter):
    """Resizes to `image_size` (no crop, aspect ratio not kept) and maps
    uint8-range pixels to `(x / 255 - mean) / std`.

    The defaults are those of the official checkpoints' BeitImageProcessor
    configs: 224 x 224, bilinear, mean = std = 0.5 (so x / 127.5 - 1).
    Antialiasing is on, as PIL's resize does when shrinking, and uint8
    images are rounded to 8 bits after each axis as PIL does
    (`PillowResizing`), so the result is BeitImageProcessor's to within one
    level.

    Args:
        image_size: (height, width) to resize to, or None for no resize.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel standard deviation on the [0, 1] scale.
        interpolation: "bilinear" or "bicubic".
        rescale_factor: what takes pixels to the [0, 1] scale (1 for
            images already there, as `do_rescale=False`).
        crop_size: (height, width) of a centre crop taken after resizing,
            as BeitImageProcessor's `do_center_crop`; None for no crop.
        keep_aspect_ratio: resize as torchvision's `Resize(int)` does
            before `CenterCrop(crop_size)`, timm's and the original code's
            evaluation transform: each image is scaled, keeping its aspect
            ratio, to cover `image_size` (for a square size, its shorter side
            becomes `image_size`), and `crop_size` is cut from its centre.
            Needs `crop_size`; not for segmentation maps.
    """

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset

    def __init__(
        self,
        image_size=(224, 224),
        mean=BEIT_MEAN,
        std=BEIT_STD,
        interpolation="bilinear",
        antialias=True,
        crop_to_aspect_ratio=False,
        scale=None,
        offset=None,
        rescale_factor=1 / 255,
        crop_size=None,
        keep_aspect_ratio=False,
        **kwargs,
    ):
        if keep_aspect_ratio and (crop_size is None or crop_to_aspect_ratio):
            raise ValueError(
                "keep_aspect_ratio=True needs a crop_size, which makes every image the same size, and "
                f"crop_to_aspect_ratio=False; received crop_size={crop_size}, "
                f"crop_to_aspect_ratio={crop_to_aspect_ratio}."
            )
        if scale is None and offset is None:
            scale, offset = normalization(mean, std, rescale_factor)
        if crop_size is not None:
            crop_size = tuple(crop_size)
            if image_size is None or any(c > s for c, s in zip(crop_size, image_size)):
                raise ValueError(
                    f"crop_size {crop_size} must fit inside the resized image_size {image_size}."
                )
        self.crop_size = crop_size
        self.keep_aspect_ratio = keep_aspect_ratio
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            **kwargs,
        )
        # keras-hub's own Resizing, with its settings, swapped for one that rounds 8-bit images as PIL does.
        self.resizing = PillowResizing(**self.resizing.get_config())
        if keep_aspect_ratio:
            self.resizing.keep_aspect_ratio_crop = crop_size  # the resized size depends on each image

    def call(self, inputs):
        outputs = super().call(inputs)
        if self.crop_size is None or self.keep_aspect_ratio:
            return outputs
        return self.center_crop(outputs)

    def center_crop(self, images):
        """The `crop_size` centre of resized images or label maps, batched or
        not, where BeitImageProcessor's center_crop takes it."""
        (height, width), (crop_height, crop_width) = self.image_size, self.crop_size
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        rows, columns = slice(top, top + crop_height), slice(left, left + crop_width)
        if self.data_format == "channels_first":
            return images[..., rows, columns]
        return images[..., rows, columns, :]

    def get_config(self):
        # keras-hub leaves the layout out, so a reloaded converter would take Keras' default of the day.
        return {
            **super().get_config(),
            "data_format": self.data_format,
            "crop_size": self.crop_size,
            "keep_aspect_ratio": self.keep_aspect_ratio,
        }
