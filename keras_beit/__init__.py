"""keras_beit: BEiT for Keras 3 on TensorFlow, JAX and PyTorch."""

from keras_beit import layers
from keras_beit.models import BEiTBackbone
from keras_beit.models import BEiTImageClassifier
from keras_beit.models import BEiTImageClassifierPreprocessor
from keras_beit.models import BEiTImageConverter
from keras_beit.models import BEiTImageSegmenter
from keras_beit.models import BEiTImageSegmenterPreprocessor
from keras_beit.models import BEiTMaskedImageModeler
from keras_beit.models import BEiTMeanIoU
from keras_beit.models import BEiTSegmentationLoss
# Registers the layer-decay optimizers, which saved models may name.
from keras_beit import training
from keras_beit.version import __version__

# Registers the checkpoint formats with from_preset; after the models, which
# the converters build.
from keras_beit import convert  # noqa: E402,F401  isort: skip
