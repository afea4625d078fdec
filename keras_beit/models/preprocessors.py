"""Preprocessors pairing BEiTImageConverter with each task."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.image_converter import BEiTImageConverter
from keras_beit.models.preset_loading import PresetLoadingMixin


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageClassifierPreprocessor(PresetLoadingMixin, ImageClassifierPreprocessor):
    """Applies a BEiTImageConverter to images; labels pass through."""

    backbone_cls = BEiTBackbone
    image_converter_cls = BEiTImageConverter
