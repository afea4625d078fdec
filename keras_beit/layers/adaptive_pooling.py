"""PyTorch's adaptive average pooling, overlapping bins included."""

import keras
import numpy as np
from keras import ops


def adaptive_pool_matrix(in_size, out_size):
    """(out_size, in_size) averaging weights of nn.AdaptiveAvgPool over one axis.

    Bin i spans [floor(i * in / out), ceil((i + 1) * in / out)); neighbouring
    bins overlap when `out_size` does not divide `in_size` (20 -> 3, 20 -> 6).
    """
    matrix = np.zeros((out_size, in_size), "float32")
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@keras.saving.register_keras_serializable(package="keras_beit")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """(B, H, W, C) to (B, out, out, C), averaging like nn.AdaptiveAvgPool2d."""

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        self.output_size = output_size

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError("AdaptiveAveragePooling2D needs a known spatial size at call time.")
        rows = ops.convert_to_tensor(adaptive_pool_matrix(height, self.output_size), inputs.dtype)
        cols = ops.convert_to_tensor(adaptive_pool_matrix(width, self.output_size), inputs.dtype)
        return ops.einsum("oh,bhwc,pw->bopc", rows, inputs, cols)

    def compute_output_shape(self, inputs_shape):
        return (inputs_shape[0], self.output_size, self.output_size, inputs_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}
