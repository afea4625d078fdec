"""Refusing out-of-range labels before they reach a loss.

An out-of-range class index gives an error on some backends and a silent NaN
or garbage loss on others (jax), so tasks check labels where the data enters
`fit`/`evaluate`: keras-hub's `preprocess_samples`, which runs eagerly on
arrays or inside a tf.data graph (checked there by keras_beit.graph_checks).
"""

import keras
import numpy as np

from keras_beit import graph_checks


def _message(num_classes, ignore_index, note=""):
    allowed = f"class indices in [0, {num_classes})"
    if ignore_index is not None:
        allowed += f" or the ignore index {ignore_index}"
    return f"Labels must be {allowed}{note}."


def as_int32(labels):
    """`labels` as int32, in the same kind of tensor (tf inside tf.data)."""
    if graph_checks.is_tf_tensor(labels):
        return graph_checks.cast(labels, "int32")
    return keras.ops.cast(labels, "int32")


def validated_labels(labels, num_classes, ignore_index=None, note=""):
    """Returns `labels` unchanged, or raises if any is out of range; `note` says what the labels went through."""
    if labels is None:
        return labels
    message = _message(num_classes, ignore_index, note)
    if graph_checks.is_tf_tensor(labels):
        return graph_checks.checked_labels(labels, num_classes, ignore_index, message)
    values = np.asarray(labels)
    if values.dtype.kind == "f" and np.any(values != np.round(values)):
        raise ValueError(message + " Received non-integer labels.")
    valid = (values >= 0) & (values < num_classes)
    if ignore_index is not None:
        valid |= values == ignore_index
    if not valid.all():
        raise ValueError(message + f" Received {np.unique(values[~valid])[:10].tolist()}.")
    return labels
