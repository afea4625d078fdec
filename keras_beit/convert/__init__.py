"""Checkpoint converters, one module per source format.

Importing this package registers each format with `from_preset`.
"""

from keras_beit.convert import transformers  # noqa: F401  isort: skip
from keras_beit.convert import unilm  # noqa: F401  isort: skip
from keras_beit.convert import mmseg  # noqa: F401  isort: skip
from keras_beit.convert import timm  # noqa: F401  isort: skip
from keras_beit.convert import catalogue  # noqa: F401  isort: skip
from keras_beit.convert import keras_hub_integration  # noqa: F401  isort: skip

# Last, after every format: a checkpoint file none of them read is refused with the reason.
from keras_beit.models.preset_loading import register_preset_loader  # noqa: E402  isort: skip

register_preset_loader(unilm.refuse_unread_checkpoint_file)
