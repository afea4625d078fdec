"""Keras' Conv2D and Conv2DTranspose, with channels first made right on tensorflow.

Two tensorflow faults, both on the channels-first path only:
- Keras' tensorflow `add` turns `outputs + bias` into `tf.nn.bias_add` and guesses
  the channel axis from the shapes: a (1, C, 1, 1) bias is added along the last
  axis whenever the width also equals C (keras 3.15,
  keras/src/backend/tensorflow/numpy.py). With the bias as the first operand that
  guess is not made.
- TensorFlow's CPU kernels for Conv2D and its transpose refuse NCHW ("only
  supports the NHWC tensor format on the CPU") unless oneDNN's ops are on, which
  TensorFlow 2.21 decides from the CPU (on for AVX-512 machines, off for AVX2
  ones) and TF_ENABLE_ONEDNN_OPTS; Keras passes NCHW straight through. On
  tensorflow a channels-first convolution therefore runs channels last between
  two transposes, whatever the CPU. torch and jax take NCHW natively (on torch it
  is the faster layout), so they keep Keras' own call.
Channels-last layers keep Keras' own path everywhere.
"""

import keras
from keras import ops

_TO_CHANNELS_LAST = (0, 2, 3, 1)
_TO_CHANNELS_FIRST = (0, 3, 1, 2)


def _convolve(convolve, inputs, data_format):
    """`convolve(inputs, data_format)`, on tensorflow through channels last for channels-first inputs."""
    if data_format == "channels_first" and keras.config.backend() == "tensorflow":
        return ops.transpose(convolve(ops.transpose(inputs, _TO_CHANNELS_LAST), "channels_last"), _TO_CHANNELS_FIRST)
    return convolve(inputs, data_format)


def _add_bias_first(layer, outputs):
    if layer.use_bias:
        outputs = ops.add(ops.reshape(layer.bias, (1, layer.filters) + (1,) * layer.rank), outputs)
    return outputs if layer.activation is None else layer.activation(outputs)


@keras.saving.register_keras_serializable(package="keras_beit")
class Conv2D(keras.layers.Conv2D):
    def convolution_op(self, inputs, kernel):
        def convolve(x, data_format):
            return ops.conv(
                x, kernel, strides=list(self.strides), padding=self.padding, dilation_rate=self.dilation_rate,
                data_format=data_format,
            )

        return _convolve(convolve, inputs, self.data_format)

    def call(self, inputs):
        if self.data_format == "channels_last":
            return super().call(inputs)
        return _add_bias_first(self, self.convolution_op(inputs, self.kernel))


@keras.saving.register_keras_serializable(package="keras_beit")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    def call(self, inputs):
        if self.data_format == "channels_last":
            return super().call(inputs)

        def convolve(x, data_format):
            return ops.conv_transpose(
                x, self.kernel, strides=list(self.strides), padding=self.padding,
                output_padding=self.output_padding, dilation_rate=self.dilation_rate, data_format=data_format,
            )

        outputs = _convolve(convolve, inputs, self.data_format)
        return _add_bias_first(self, outputs)
