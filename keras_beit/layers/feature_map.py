"""Token sequences back to spatial feature maps."""

import keras
from keras import ops

from keras_beit.layers.patch_embedding import image_grid


@keras.saving.register_keras_serializable(package="keras_beit")
class TokensToFeatureMap(keras.layers.Layer):
    """(B, 1 + h*w, D) tokens to a (B, h, w, D) map, dropping the CLS token.

    Called with the images as a second input, whose size gives the patch grid
    (h, w), so maps of any input size come out with their true shape.
    """

    def __init__(self, patch_size, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.data_format = data_format

    def call(self, tokens, images):
        height, width = image_grid(images, self.patch_size, self.data_format)
        return ops.reshape(tokens[:, 1:], (ops.shape(tokens)[0], height, width, tokens.shape[-1]))

    def compute_output_shape(self, tokens_shape, images_shape):
        spatial = images_shape[1:3] if self.data_format == "channels_last" else images_shape[2:4]
        grid = tuple(None if s is None else s // self.patch_size for s in spatial)
        return (tokens_shape[0],) + grid + (tokens_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "data_format": self.data_format})
        return config
