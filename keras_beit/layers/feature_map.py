"""Token sequences back to spatial feature maps."""

import keras
from keras import ops

from keras_beit.layers.layout import image_shape_like
from keras_beit.layers.layout import spatial_dims
from keras_beit.layers.patch_embedding import image_grid


@keras.saving.register_keras_serializable(package="keras_beit")
class TokensToFeatureMap(keras.layers.Layer):
    """(B, 1 + h*w, D) tokens to a (B, h, w, D) map, dropping the CLS token.

    Called with the images as a second input, whose size gives the patch grid
    (h, w), so maps of any input size come out with their true shape. With
    `data_format="channels_first"` both the images and the map are channels
    first: the map is (B, D, h, w).
    """

    def __init__(self, patch_size, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.data_format = data_format

    def call(self, tokens, images):
        height, width = image_grid(images, self.patch_size, self.data_format)
        maps = ops.reshape(tokens[:, 1:], (ops.shape(tokens)[0], height, width, tokens.shape[-1]))
        return maps if self.data_format == "channels_last" else ops.transpose(maps, (0, 3, 1, 2))

    def compute_output_shape(self, tokens_shape, images_shape):
        grid = [None if s is None else s // self.patch_size for s in spatial_dims(images_shape, self.data_format)]
        return image_shape_like(images_shape, self.data_format, channels=tokens_shape[-1], spatial=grid)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "data_format": self.data_format})
        return config
