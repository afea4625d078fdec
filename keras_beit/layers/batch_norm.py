"""BatchNorm with PyTorch's running statistics, for the segmentation heads."""

import keras
from keras import ops

from keras_beit.layers.layout import channel_axis


@keras.saving.register_keras_serializable(package="keras_beit")
class BatchNormalization(keras.layers.BatchNormalization):
    """PyTorch's BatchNorm2d: eps 1e-5, momentum 0.1, unbiased moving variance.

    Both normalise a training batch by its biased variance, but PyTorch (and
    so mmseg and transformers) moves `running_var` towards the unbiased one,
    n / (n - 1) times larger, where n counts the values per channel. Keras
    moves it towards the biased one. The gap is largest where n is small:
    UperNet's 1 x 1 pyramid-pooling branch has n = batch size, so a batch of
    2 would halve every step of its running variance.

    The batch variance is taken as the mean squared deviation from the mean.
    Keras' torch `ops.moments` takes E[x^2] - E[x]^2 instead, which cancels
    where the mean is large against the spread: it put a 0.1% error into every
    backbone gradient of a segmenter trained on torch.
    """

    def __init__(self, data_format="channels_last", **kwargs):
        kwargs.setdefault("axis", channel_axis(data_format))
        kwargs.setdefault("epsilon", 1e-5)
        kwargs.setdefault("momentum", 0.9)  # Keras keeps this share; PyTorch's momentum is the other 0.1
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        if self.synchronized:  # tf.distribute's cross-replica statistics
            mean, variance = ops.moments(inputs, axes=self._reduction_axes, synchronized=True)
        else:
            mean = ops.mean(inputs, axis=self._reduction_axes, keepdims=True)
            variance = ops.mean(ops.square(inputs - mean), axis=self._reduction_axes)
            mean = ops.squeeze(mean, axis=self._reduction_axes)
        count = ops.cast(ops.size(inputs), inputs.dtype) / ops.cast(ops.shape(inputs)[self.axis], inputs.dtype)
        # A single value per channel has no spread either way (PyTorch refuses it).
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        self.moving_mean.assign(
            ops.cast(self.moving_mean, inputs.dtype) * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, inputs.dtype) * self.momentum + unbiased * (1.0 - self.momentum)
        )
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs = ops.batch_normalization(
            inputs, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)
