"""PyTorch-exact 1-D interpolation matrices, built with keras.ops.

BEiT checkpoints were trained and are validated with PyTorch's `F.interpolate`.
Keras' own bicubic uses a different kernel (Keys a = -0.5) on jax and
tensorflow, so resizing is written here as separable matrix products that
reproduce PyTorch's `align_corners=False`, no-antialias arithmetic on every
backend. The output size may be a Python int or a scalar tensor (an unknown
image size in a TensorFlow graph); the input size is always static.
"""

from keras import ops

_CUBIC_A = -0.75  # PyTorch's cubic-convolution coefficient.


def _source_positions(in_size, out_size):
    out_positions = ops.arange(out_size, dtype="float32")
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    return (out_positions + 0.5) * scale - 0.5


def bilinear_matrix(in_size, out_size):
    """(out_size, in_size) weights of `F.interpolate(mode="bilinear")`."""
    src = ops.maximum(_source_positions(in_size, out_size), 0.0)
    low = ops.floor(src)
    frac = src - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, in_size - 1)
    return ops.one_hot(low, in_size) * (1.0 - frac)[:, None] + ops.one_hot(
        high, in_size
    ) * frac[:, None]


def _cubic_near(x):
    return ((_CUBIC_A + 2.0) * x - (_CUBIC_A + 3.0)) * x * x + 1.0


def _cubic_far(x):
    return ((_CUBIC_A * x - 5.0 * _CUBIC_A) * x + 8.0 * _CUBIC_A) * x - 4.0 * _CUBIC_A


def bicubic_matrix(in_size, out_size):
    """(out_size, in_size) weights of `F.interpolate(mode="bicubic")`.

    Taps outside the input are clamped to the border, as PyTorch does.
    """
    src = _source_positions(in_size, out_size)
    base = ops.floor(src)
    t = src - base
    base = ops.cast(base, "int32")
    weights = (_cubic_far(t + 1.0), _cubic_near(t), _cubic_near(1.0 - t), _cubic_far(2.0 - t))
    matrix = 0.0
    for offset, weight in zip((-1, 0, 1, 2), weights):
        tap = ops.clip(base + offset, 0, in_size - 1)
        matrix = matrix + ops.one_hot(tap, in_size) * weight[:, None]
    return matrix


def resize_grid(grid, out_height, out_width, method):
    """Resizes a (height, width, channels) grid like PyTorch's `interpolate`.

    `method` is "bilinear" or "bicubic". `grid` must have static height and
    width.
    """
    make = {"bilinear": bilinear_matrix, "bicubic": bicubic_matrix}[method]
    in_height, in_width = grid.shape[0], grid.shape[1]
    rows = ops.cast(make(in_height, out_height), grid.dtype)
    cols = ops.cast(make(in_width, out_width), grid.dtype)
    return ops.einsum("oh,hwc,pw->opc", rows, grid, cols)
