"""BEiTImageConverter: resize, rescale and normalize images for BEiT."""

import keras
from keras_hub.layers import ImageConverter

from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.preset_loading import routed_from_preset

# Every official BEiT v1, DiT and data2vec-vision checkpoint uses mean = std = 0.5.
BEIT_MEAN = (0.5, 0.5, 0.5)
BEIT_STD = (0.5, 0.5, 0.5)


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
    Antialiasing is on, as PIL's resize does when shrinking.

    Args:
        image_size: (height, width) to resize to, or None for no resize.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel standard deviation on the [0, 1] scale.
        interpolation: "bilinear" or "bicubic".
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
        **kwargs,
    ):
        if scale is None and offset is None:
            scale, offset = normalization(mean, std)
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            **kwargs,
        )

    def get_config(self):
        # keras-hub leaves the layout out, so a reloaded converter would take Keras' default of the day.
        return {**super().get_config(), "data_format": self.data_format}
