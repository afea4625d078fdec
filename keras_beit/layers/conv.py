"""Keras' Conv2D and Conv2DTranspose, with a channels-first bias that is right on tensorflow.

Keras' tensorflow `add` turns `outputs + bias` into `tf.nn.bias_add` and guesses
the channel axis from the shapes: a (1, C, 1, 1) bias is added along the last axis
whenever the width also equals C (keras 3.15, keras/src/backend/tensorflow/numpy.py).
With the bias as the first operand that guess is not made. Channels-last layers
keep Keras' own path.
"""

import keras
from keras import ops


def _add_bias_first(layer, outputs):
    if layer.use_bias:
        outputs = ops.add(ops.reshape(layer.bias, (1, layer.filters) + (1,) * layer.rank), outputs)
    return outputs if layer.activation is None else layer.activation(outputs)


@keras.saving.register_keras_serializable(package="keras_beit")
class Conv2D(keras.layers.Conv2D):
    def call(self, inputs):
        if self.data_format == "channels_last":
            return super().call(inputs)
        return _add_bias_first(self, self.convolution_op(inputs, self.kernel))


@keras.saving.register_keras_serializable(package="keras_beit")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    def call(self, inputs):
        if self.data_format == "channels_last":
            return super().call(inputs)
        outputs = ops.conv_transpose(
            inputs,
            self.kernel,
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return _add_bias_first(self, outputs)
