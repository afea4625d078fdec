"""Checkpoint converters, one module per source format.

Importing this package registers each format with `from_preset`.
"""

from keras_beit.convert import transformers  # noqa: F401
