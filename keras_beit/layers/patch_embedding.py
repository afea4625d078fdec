"""Patch embedding with the CLS token, an optional mask token and positions."""

import keras
from keras import ops

from keras_beit import graph_checks
from keras_beit.layers.conv import Conv2D
from keras_beit.layers.interpolation import resize_grid
from keras_beit.layers.layout import spatial_dims


def image_grid(images, patch_size, data_format):
    """(grid_height, grid_width) of an image batch, validating its shape."""
    shape = ops.shape(images)
    if len(shape) != 4:
        raise ValueError(
            "BEiT expects a batch of images of rank 4, (batch, height, width, "
            f"channels); received a tensor of shape {tuple(shape)}."
        )
    sizes = dict(zip(("height", "width"), spatial_dims(shape, data_format)))
    for name, size in sizes.items():
        if isinstance(size, int):
            if size % patch_size:
                raise ValueError(f"{_not_a_multiple(name, patch_size)} {tuple(shape)}.")
        elif graph_checks.is_tf_tensor(size):
            # A tensorflow function traced with an unknown size: the strided
            # patch convolution would silently drop the remainder.
            message = _not_a_multiple(name, patch_size)
            sizes[name] = graph_checks.checked(size, ops.equal(size % patch_size, 0), message, ops.shape(images))
    return sizes["height"] // patch_size, sizes["width"] // patch_size


def _not_a_multiple(name, patch_size):
    return f"The image {name} must be a multiple of the patch size {patch_size}; received images of shape"


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTPatchEmbedding(keras.layers.Layer):
    """Images to the token sequence `[CLS] + patches` of shape (B, N + 1, D).

    A convolution with kernel and stride `patch_size` embeds the patches
    (row-major order). With `use_mask_token`, patches whose `masked_patches` entry is
    True are replaced by a learned mask token before the CLS token is
    prepended. `masked_patches` is a (B, N) boolean tensor. With `use_absolute_position_embeddings`, learned embeddings
    for the `window_size` grid are added, resized to the input's grid with
    PyTorch's bicubic kernel when it differs.

    Args:
        hidden_dim: embedding width D.
        patch_size: side of a square patch in pixels.
        num_channels: channels of the input images.
        window_size: (height, width) patch grid of the position embeddings.
        use_mask_token: create a mask token (masked image modeling).
        use_absolute_position_embeddings: add learned absolute positions.
        data_format: "channels_last" or "channels_first".
    """

    def __init__(
        self,
        hidden_dim,
        patch_size,
        num_channels,
        window_size,
        use_mask_token=False,
        use_absolute_position_embeddings=False,
        data_format="channels_last",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.window_size = tuple(int(s) for s in window_size)
        self.use_mask_token = use_mask_token
        self.use_absolute_position_embeddings = use_absolute_position_embeddings
        self.data_format = data_format
        self.projection = Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            data_format=data_format,
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, images_shape, masked_patches_shape=None):
        channels_axis = -1 if self.data_format == "channels_last" else 1
        self.projection.build((None,) + self._image_shape(channels_axis))
        self.cls_token = self.add_weight(
            name="cls_token", shape=(1, 1, self.hidden_dim), initializer="zeros"
        )
        if self.use_mask_token:
            self.mask_token = self.add_weight(
                name="mask_token", shape=(1, 1, self.hidden_dim), initializer="zeros"
            )
        if self.use_absolute_position_embeddings:
            positions = self.window_size[0] * self.window_size[1] + 1
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=(1, positions, self.hidden_dim),
                initializer="zeros",
            )
        self.built = True

    def _image_shape(self, channels_axis):
        return (None, None, self.num_channels) if channels_axis == -1 else (self.num_channels, None, None)

    def call(self, images, masked_patches=None):
        grid_height, grid_width = image_grid(images, self.patch_size, self.data_format)
        channels = images.shape[-1 if self.data_format == "channels_last" else 1]
        if channels is not None and channels != self.num_channels:
            raise ValueError(
                f"This BEiT model expects {self.num_channels}-channel images; "
                f"received images of shape {tuple(ops.shape(images))}."
            )
        patches = self.projection(images)
        if self.data_format == "channels_first":
            patches = ops.transpose(patches, (0, 2, 3, 1))
        batch = ops.shape(patches)[0]
        tokens = ops.reshape(patches, (batch, -1, self.hidden_dim))
        if masked_patches is not None:
            if not self.use_mask_token:
                raise ValueError(
                    "A mask was given, but this model has no mask token. Build "
                    "it with `use_mask_token=True`."
                )
            patches = grid_height * grid_width
            patches = patches if isinstance(patches, int) else None  # unknown in a graph traced for any size
            mask_shape = tuple(masked_patches.shape)
            if len(mask_shape) != 2 or (None not in (patches, mask_shape[1]) and mask_shape[1] != patches):
                raise ValueError(
                    f"The mask must be (batch, patches), one boolean per patch ({patches or 'all'} of them); "
                    f"received a mask of shape {mask_shape}."
                )
            weight = ops.cast(ops.expand_dims(masked_patches, -1), tokens.dtype)
            tokens = tokens * (1.0 - weight) + ops.cast(self.mask_token, tokens.dtype) * weight
        cls = ops.broadcast_to(ops.cast(self.cls_token, tokens.dtype), (batch, 1, self.hidden_dim))
        tokens = ops.concatenate([cls, tokens], axis=1)
        if self.use_absolute_position_embeddings:
            tokens = tokens + self._positions(grid_height, grid_width)
        return tokens

    def _positions(self, grid_height, grid_width):
        positions = self.position_embeddings
        if all(isinstance(s, int) for s in (grid_height, grid_width)) and (
            (grid_height, grid_width) == self.window_size
        ):
            return positions
        patch_positions = ops.reshape(positions[0, 1:], self.window_size + (self.hidden_dim,))
        patch_positions = resize_grid(patch_positions, grid_height, grid_width, "bicubic")
        patch_positions = ops.reshape(patch_positions, (1, -1, self.hidden_dim))
        return ops.concatenate([positions[:, :1], patch_positions], axis=1)

    def compute_output_shape(self, images_shape, masked_patches_shape=None):
        spatial = images_shape[1:3] if self.data_format == "channels_last" else images_shape[2:4]
        tokens = None
        if None not in spatial:
            tokens = (spatial[0] // self.patch_size) * (spatial[1] // self.patch_size) + 1
        return (images_shape[0], tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "num_channels": self.num_channels,
                "window_size": self.window_size,
                "use_mask_token": self.use_mask_token,
                "use_absolute_position_embeddings": self.use_absolute_position_embeddings,
                "data_format": self.data_format,
            }
        )
        return config
