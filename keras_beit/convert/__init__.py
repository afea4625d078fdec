"""Checkpoint converters, one module per source format.

Importing this package registers each format with `from_preset`.
"""

from keras_beit.convert import transformers  # noqa: F401  isort: skip
from keras_beit.convert import unilm  # noqa: F401  isort: skip
from keras_beit.convert import mmseg  # noqa: F401  isort: skip
from keras_beit.convert import timm  # noqa: F401  isort: skip
from keras_beit.convert import catalogue  # noqa: F401  isort: skip
from keras_beit.convert import keras_hub_integration  # noqa: F401  isort: skip
