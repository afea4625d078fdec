"""Preprocessors pairing BEiTImageConverter with each task."""

import keras
from keras_hub.models import ImageClassifierPreprocessor
from keras_hub.models import ImageSegmenterPreprocessor

from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.image_converter import BEiTImageConverter
from keras_beit.models.label_checks import as_int32
from keras_beit.models.preset_loading import routed_from_preset


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Applies a BEiTImageConverter to images; labels pass through."""

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset
    image_converter_cls = BEiTImageConverter


def reduce_labels(labels):
    """ADE20K's label reduction: 0 (background) becomes 255, k becomes k - 1.

    255 stays 255. Written with arithmetic operators only, so it runs on
    numpy arrays and on the tf tensors of a tf.data pipeline alike; widened
    first, since uint8 (the dtype of PNG annotations) would wrap at 256.
    """
    shifted = (as_int32(labels) + 255) % 256  # 0 -> 255, k -> k - 1, 255 -> 254
    return shifted + (shifted // 254) * (1 - shifted // 255)  # 254 -> 255


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageSegmenterPreprocessor(ImageSegmenterPreprocessor):
    """Images through a BEiTImageConverter, segmentation maps alongside.

    Maps `(batch, H, W)` or `(batch, H, W, 1)` are resized to the converter's
    size with nearest neighbour, never interpolated, and keep their integer
    values. `reduce_labels` applies ADE20K's reduction (0 becomes the ignore
    value 255, every other class shifts down by one) before resizing.
    """

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset
    image_converter_cls = BEiTImageConverter

    def __init__(self, image_converter=None, reduce_labels=False, **kwargs):
        if getattr(image_converter, "keep_aspect_ratio", False):
            raise ValueError(
                "BEiTImageSegmenterPreprocessor resizes maps to the converter's fixed image_size; a "
                "converter with keep_aspect_ratio=True (timm's evaluation crop) is for classification."
            )
        kwargs.setdefault("resize_output_mask", True)
        super().__init__(image_converter=image_converter, **kwargs)
        self.reduce_labels = reduce_labels

    def call(self, x, y=None, sample_weight=None):
        # The mask is resized as a one-channel image in the converter's data format.
        channels_first = self.image_converter is not None and self.image_converter.data_format == "channels_first"
        if y is not None:
            if self.reduce_labels:
                y = reduce_labels(y)
            if len(y.shape) == 3:
                y = y[:, None] if channels_first else y[..., None]
        # A converter with no image_size (do_resize false) leaves maps at their own size, as transformers does.
        resizes_maps = self.image_converter is not None and self.image_converter.image_size is not None
        x, resized, sample_weight = keras.utils.unpack_x_y_sample_weight(
            super().call(x, y=y if resizes_maps else None, sample_weight=sample_weight)
        )
        if y is not None:
            y = resized if resizes_maps else y
            if self.image_converter is not None and self.image_converter.crop_size is not None:
                y = self.image_converter.center_crop(y)  # BeitImageProcessor crops the maps too
            y = y[:, 0] if channels_first else y[..., 0]
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"reduce_labels": self.reduce_labels, "resize_output_mask": self.resize_output_mask}
        )
        return config
