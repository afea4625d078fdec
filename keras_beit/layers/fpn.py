"""The FPN neck that turns four same-stride ViT maps into a 4-level pyramid."""

import keras

from keras_beit.layers.backward import exact_gelu
from keras_beit.layers.batch_norm import BatchNormalization
from keras_beit.layers.conv import Conv2DTranspose
from keras_beit.layers.layout import channel_axis
from keras_beit.layers.layout import image_shape_like
from keras_beit.layers.layout import spatial_dims


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTFPNNeck(keras.layers.Layer):
    """Four (B, h, w, D) maps to strides x4, x2, x1 and x1/2 of the patch grid.

    Map 1: ConvTranspose(2, 2) - BatchNorm - GELU - ConvTranspose(2, 2);
    map 2: ConvTranspose(2, 2); map 3: unchanged; map 4: 2 x 2 max pooling.
    BatchNorm keeps PyTorch's statistics (eps 1e-5, momentum 0.1, unbiased
    running variance), the GELU is exact, as in the original BEiT segmentation backbone.
    With `data_format="channels_first"` the maps are (B, D, h, w).
    """

    def __init__(self, hidden_dim, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.data_format = data_format
        common = dict(dtype=self.dtype_policy, data_format=data_format)
        self.fpn1_conv1 = Conv2DTranspose(hidden_dim, 2, strides=2, name="fpn1_conv1", **common)
        self.fpn1_norm = BatchNormalization(data_format, name="fpn1_norm", dtype=self.dtype_policy)
        self.fpn1_conv2 = Conv2DTranspose(hidden_dim, 2, strides=2, name="fpn1_conv2", **common)
        self.fpn2_conv = Conv2DTranspose(hidden_dim, 2, strides=2, name="fpn2_conv", **common)
        self.fpn4_pool = keras.layers.MaxPooling2D(2, strides=2, name="fpn4_pool", **common)

    def build(self, maps_shape):
        shape = tuple(maps_shape[0])
        self.fpn1_conv1.build(shape)
        doubled = self.fpn1_conv1.compute_output_shape(shape)
        self.fpn1_norm.build(doubled)
        self.fpn1_conv2.build(doubled)
        self.fpn2_conv.build(shape)
        self.built = True

    def call(self, maps, training=None):
        first, second, third, fourth = maps
        first = self.fpn1_conv1(first)
        first = exact_gelu(self.fpn1_norm(first, training=training), training=training)
        return [self.fpn1_conv2(first), self.fpn2_conv(second), third, self.fpn4_pool(fourth)]

    def compute_output_shape(self, maps_shape):
        def scaled(shape, factor):
            spatial = [None if s is None else int(s * factor) for s in spatial_dims(shape, self.data_format)]
            return image_shape_like(shape, self.data_format, spatial=spatial)

        return [scaled(tuple(s), f) for s, f in zip(maps_shape, (4, 2, 1, 0.5))]

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "data_format": self.data_format}
