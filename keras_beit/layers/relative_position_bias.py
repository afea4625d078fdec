"""BEiT's relative position bias, resized to the input's patch grid at call time."""

import functools

import keras
import numpy as np
from keras import ops

from keras_beit.layers.interpolation import resize_grid
from keras_beit.layers.layout import spatial_dims
from keras_beit.layers.patch_embedding import image_grid


def num_relative_distances(window_size):
    """Rows of the bias table for a patch grid: every offset, plus 3 CLS rows."""
    height, width = window_size
    return (2 * height - 1) * (2 * width - 1) + 3


def relative_position_index(grid_height, grid_width):
    """The unilm index of shape (N + 1, N + 1) into a table for this grid.

    Patch pairs index their offset (dy, dx) row-major in a
    (2h - 1) x (2w - 1) grid. The three CLS rows follow, in the original's
    order: CLS query to a patch, a patch query to CLS, CLS to CLS.
    """
    # A copy: the cached numpy index must not be shared with a caller who may write to it.
    return ops.copy(_index_for(grid_height, grid_width))


def _index_for(grid_height, grid_width):
    if _static(grid_height, grid_width):
        return _static_index(grid_height, grid_width)
    return _index(ops, grid_height, grid_width)


def _static(*sizes):
    # Grid sizes are tensors only in a graph with an unknown image size.
    return all(isinstance(s, int) for s in sizes)


@functools.lru_cache(maxsize=32)
def _static_index(grid_height, grid_width):
    # Every block of every call needs the same index; built once in numpy, it
    # costs eager backends nothing per call and compiled ones a constant.
    return _index(np, grid_height, grid_width)


def _index(xp, grid_height, grid_width):
    """The index, with `xp` numpy for a known grid or keras.ops for a traced one."""
    rows = xp.arange(grid_height, dtype="int32")
    cols = xp.arange(grid_width, dtype="int32")
    dy = rows[:, None] - rows[None, :] + grid_height - 1
    dx = cols[:, None] - cols[None, :] + grid_width - 1
    pairs = dy[:, None, :, None] * (2 * grid_width - 1) + dx[None, :, None, :]
    num_patches = grid_height * grid_width
    pairs = xp.reshape(pairs, (num_patches, num_patches))
    offsets = (2 * grid_height - 1) * (2 * grid_width - 1)
    patch_to_cls = xp.full((num_patches, 1), offsets + 1, dtype="int32")
    cls_row = xp.concatenate(
        [
            xp.full((1, 1), offsets + 2, dtype="int32"),
            xp.full((1, num_patches), offsets, dtype="int32"),
        ],
        axis=1,
    )
    body = xp.concatenate([patch_to_cls, pairs], axis=1)
    return xp.concatenate([cls_row, body], axis=0)


def grid_table(table, window_size, grid_height, grid_width):
    """A table for `window_size`, resized to a grid's `((2h - 1)(2w - 1) + 3, heads)`.

    The offset rows are resized bilinearly (align_corners=False) from the
    table's (2Wh - 1, 2Ww - 1) grid, as transformers 5 does; the CLS rows are
    kept. At the table's own grid the resize is an exact identity.
    """
    num_offsets = (2 * window_size[0] - 1) * (2 * window_size[1] - 1)
    offsets = ops.reshape(
        table[:num_offsets], (2 * window_size[0] - 1, 2 * window_size[1] - 1, -1)
    )
    same_grid = _static(grid_height, grid_width) and (grid_height, grid_width) == tuple(window_size)
    if not same_grid:
        offsets = resize_grid(
            offsets, 2 * grid_height - 1, 2 * grid_width - 1, "bilinear"
        )
    heads = table.shape[-1]
    return ops.concatenate([ops.reshape(offsets, (-1, heads)), table[num_offsets:]], axis=0)


def expand_table(rows, index):
    """The (heads, N + 1, N + 1) bias: a grid's table rows taken at its `relative_position_index`."""
    # Taking rows with the (N + 1, N + 1) index gives (N + 1, N + 1, heads) directly.
    return ops.transpose(ops.take(rows, index, axis=0), (2, 0, 1))


class RelativePositionIndex(keras.Operation):
    """The images' `relative_position_index`, as one tensor of the model's graph.

    Blocks with their own tables share it. A constant per block would be
    copied into the graph once per block: on tensorflow, twelve 10 MB
    constants at 640 x 640 raised the peak memory by about 750 MB.
    """

    def __init__(self, patch_size, data_format="channels_last", name=None):
        super().__init__(name=name)
        self.patch_size = patch_size
        self.data_format = data_format

    def call(self, images):
        return ops.convert_to_tensor(_index_for(*image_grid(images, self.patch_size, self.data_format)), "int32")

    def compute_output_spec(self, images):
        grid = _known_grid(images.shape, self.patch_size, self.data_format)
        tokens = None if grid is None else grid[0] * grid[1] + 1
        return keras.KerasTensor((tokens, tokens), dtype="int32")


def _known_grid(images_shape, patch_size, data_format):
    """The patch grid of a symbolic image shape, or None while its size is unknown."""
    spatial = spatial_dims(images_shape, data_format)
    if None in spatial:
        return None
    return spatial[0] // patch_size, spatial[1] // patch_size


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTRelativePositionBias(keras.layers.Layer):
    """A learned relative position bias for every pair of tokens.

    Holds a `((2Wh - 1)(2Ww - 1) + 3, num_heads)` table for the patch grid
    `window_size` it was trained on. Called on the images, it returns the
    additive attention bias `(1, num_heads, N + 1, N + 1)` for their patch
    grid, resizing the table when the grid differs. With `expand=False` it
    returns the resized table (`grid_table`) instead, which `BEiTBlock`
    expands with a `RelativePositionIndex` only as it runs. The backbone
    hands each block its own table that way: a full bias is 123 MB per block
    at 640, and every backend would hold all of them at once (Keras'
    functional model on torch keeps each layer's output to the end of the
    call; see `computed_after` for the others).

    Args:
        window_size: (height, width) of the patch grid the table belongs to.
        num_heads: attention heads; one bias per head.
        patch_size: side of a square patch in pixels.
        data_format: "channels_last" or "channels_first" images.
    """

    def __init__(
        self, window_size, num_heads, patch_size, data_format="channels_last", **kwargs
    ):
        super().__init__(**kwargs)
        self.window_size = tuple(int(s) for s in window_size)
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.data_format = data_format

    def build(self, images_shape=None, shared_bias_shape=None):
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=(num_relative_distances(self.window_size), self.num_heads),
            initializer="zeros",
        )
        self.built = True

    def call(self, images, shared_bias=None, expand=True):
        """The bias for the images' grid; `shared_bias`, of the same form, is added."""
        grid = image_grid(images, self.patch_size, self.data_format)
        rows = grid_table(self.relative_position_bias_table, self.window_size, *grid)
        if not expand:
            return rows if shared_bias is None else rows + shared_bias
        bias = ops.expand_dims(expand_table(rows, _index_for(*grid)), 0)
        if shared_bias is not None:
            bias = bias + shared_bias
        return bias

    def compute_output_spec(self, images, shared_bias=None, expand=True):
        grid = _known_grid(images.shape, self.patch_size, self.data_format)
        if not expand:
            rows = None if grid is None else num_relative_distances(grid)
            return keras.KerasTensor((rows, self.num_heads), dtype=self.compute_dtype)
        tokens = None if grid is None else grid[0] * grid[1] + 1
        return keras.KerasTensor((1, self.num_heads, tokens, tokens), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "window_size": self.window_size,
                "num_heads": self.num_heads,
                "patch_size": self.patch_size,
                "data_format": self.data_format,
            }
        )
        return config
