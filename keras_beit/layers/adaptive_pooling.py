"""PyTorch's adaptive average pooling, overlapping bins included."""

import keras
import numpy as np
from keras import ops

from keras_beit.layers.layout import image_shape_like
from keras_beit.layers.layout import spatial_dims


def adaptive_pool_matrix(in_size, out_size):
    """(out_size, in_size) averaging weights of nn.AdaptiveAvgPool over one axis.

    Bin i spans [floor(i * in / out), ceil((i + 1) * in / out)); neighbouring
    bins overlap when `out_size` does not divide `in_size` (20 -> 3, 20 -> 6).
    Built with numpy from static sizes, so it enters the graph as a constant.
    """
    bins = np.arange(out_size)
    start = (bins * in_size) // out_size
    end = -((-(bins + 1) * in_size) // out_size)
    positions = np.arange(in_size)
    inside = (positions >= start[:, None]) & (positions < end[:, None])
    return (inside / (end - start)[:, None]).astype("float32")


def _pair(size):
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


@keras.saving.register_keras_serializable(package="keras_beit")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """(B, H, W, C) to (B, out_h, out_w, C), averaging like nn.AdaptiveAvgPool2d.

    Pooling is two averaging matrices, (out_h, H) and (out_w, W), applied with
    one einsum; H and W must be known when the layer is called.

    Args:
        output_size: an int for a square output, or `(out_h, out_w)`.
        data_format: "channels_last" (B, H, W, C) or "channels_first" (B, C, H, W).
    """

    def __init__(self, output_size, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.output_size = output_size if isinstance(output_size, int) else tuple(output_size)
        self.data_format = data_format
        self._out_h, self._out_w = _pair(output_size)
        self.built = True  # no weights: the pooling matrices follow the input size

    def call(self, inputs):
        height, width = spatial_dims(inputs.shape, self.data_format)
        if height is None or width is None:
            raise ValueError("AdaptiveAveragePooling2D needs a known spatial size at call time.")
        rows = ops.convert_to_tensor(adaptive_pool_matrix(height, self._out_h), inputs.dtype)
        cols = ops.convert_to_tensor(adaptive_pool_matrix(width, self._out_w), inputs.dtype)
        # Two two-operand contractions: a three-operand einsum goes through
        # opt_einsum on torch, which fixes the batch size torch.export traces.
        if self.data_format == "channels_last":
            return ops.einsum("pw,bowc->bopc", cols, ops.einsum("oh,bhwc->bowc", rows, inputs))
        return ops.einsum("pw,bcow->bcop", cols, ops.einsum("oh,bchw->bcow", rows, inputs))

    def compute_output_shape(self, inputs_shape):
        return image_shape_like(inputs_shape, self.data_format, spatial=(self._out_h, self._out_w))

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "data_format": self.data_format}
