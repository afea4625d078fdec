"""Mean IoU that counts its confusion matrix with one segment sum."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTMeanIoU(keras.metrics.MeanIoU):
    """`keras.metrics.MeanIoU` with the same arguments and results, fast on torch.

    Keras builds the confusion matrix with `ops.scatter`, which the torch
    backend runs as a Python loop over every pixel: at a 512 x 512 crop and
    batch 8 that is two million Python iterations per training step. Here
    each pixel's (true, predicted) pair becomes one cell index and
    `ops.segment_sum` adds the weights per cell, a single vectorised op on
    every backend (and jit-safe on jax, where `ops.bincount` is not).

    Pixels whose true or predicted class lies outside `[0, num_classes)`,
    and those labelled `ignore_class`, count for nothing, as in Keras.
    As with Keras' metric, pass `sparse_y_pred=False` for logits.
    """

    def __init__(self, num_classes, name=None, *args, **kwargs):
        # Keras' name, so training history keys stay those of keras.metrics.MeanIoU.
        super().__init__(num_classes, name or "mean_io_u", *args, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if not self.sparse_y_true:
            y_true = ops.argmax(y_true, axis=self.axis)
        if not self.sparse_y_pred:
            y_pred = ops.argmax(y_pred, axis=self.axis)
        y_true = ops.reshape(ops.cast(y_true, "int32"), [-1])
        y_pred = ops.reshape(ops.cast(y_pred, "int32"), [-1])
        n = self.num_classes
        counted = (y_true >= 0) & (y_true < n) & (y_pred >= 0) & (y_pred < n)
        if self.ignore_class is not None:
            counted = counted & (y_true != self.ignore_class)
        weights = ops.ones_like(y_true, self.dtype) if sample_weight is None else sample_weight
        weights = ops.broadcast_to(ops.reshape(ops.cast(weights, self.dtype), [-1]), ops.shape(y_true))
        weights = ops.where(counted, weights, ops.zeros_like(weights))
        cells = ops.where(counted, y_true * n + y_pred, ops.zeros_like(y_true))
        counts = ops.segment_sum(weights, cells, num_segments=n * n)
        return self.total_cm.assign(self.total_cm + ops.cast(ops.reshape(counts, (n, n)), self.dtype))
