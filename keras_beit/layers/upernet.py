"""UperNet decode head and FCN auxiliary head, as mmseg and transformers build them."""

import keras
from keras import ops

from keras_beit.layers.adaptive_pooling import AdaptiveAveragePooling2D
from keras_beit.layers.batch_norm import BatchNormalization
from keras_beit.layers.conv import Conv2D
from keras_beit.layers.layout import channel_axis
from keras_beit.layers.layout import image_shape_like
from keras_beit.layers.layout import spatial_dims


def resize_bilinear(x, size, data_format="channels_last"):
    """PyTorch's bilinear `interpolate` (align_corners False) to a static size."""
    if spatial_dims(x.shape, data_format) == tuple(size):
        return x
    return ops.image.resize(x, size, interpolation="bilinear", antialias=False, data_format=data_format)


@keras.saving.register_keras_serializable(package="keras_beit")
class ConvBNReLU(keras.layers.Layer):
    """Conv2D without bias, BatchNorm (PyTorch's statistics), ReLU.

    mmseg's ConvModule / transformers' BeitConvLayer with stride 1 and
    `padding=kernel_size // 2`, which Keras' "same" padding equals for odd kernels.
    """

    def __init__(self, filters, kernel_size, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.data_format = data_format
        self.conv = Conv2D(
            filters, kernel_size, padding="same", use_bias=False, data_format=data_format, name="conv",
            dtype=self.dtype_policy,
        )
        self.norm = BatchNormalization(data_format, name="norm", dtype=self.dtype_policy)

    def build(self, inputs_shape):
        self.conv.build(inputs_shape)
        self.norm.build(self.conv.compute_output_shape(inputs_shape))
        self.built = True

    def call(self, inputs, training=None):
        """`inputs` is one map, or a list of maps that the conv reads as their channel concatenation."""
        return ops.relu(self.norm(self._convolve(inputs), training=training))

    def _convolve(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            return self.conv(inputs)
        # A sum of convolutions over the parts, each with its slice of the
        # kernel, never the concatenation: UperNet's fuse conv (3072 input
        # channels, 3x3, at a quarter of 640) ran at 111-130 GFLOP/s as one
        # convolution on every backend here, and at 175-183 as four of 768.
        kernel = self.conv.kernel
        axis = channel_axis(self.data_format)
        outputs, start = None, 0
        for part in inputs:
            stop = start + part.shape[axis]
            convolved = self.conv.convolution_op(part, kernel[:, :, start:stop, :])
            outputs = convolved if outputs is None else outputs + convolved
            start = stop
        return outputs

    def compute_output_shape(self, inputs_shape):
        if isinstance(inputs_shape, (list, tuple)) and isinstance(inputs_shape[0], (list, tuple)):
            axis = channel_axis(self.data_format)
            channels = sum(shape[axis] for shape in inputs_shape)
            inputs_shape = image_shape_like(tuple(inputs_shape[0]), self.data_format, channels=channels)
        return self.conv.compute_output_shape(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTUperNetHead(keras.layers.Layer):
    """UperNet over a 4-level pyramid: logits at the finest level's size.

    Pyramid pooling (PSP) on the coarsest level, with PyTorch's adaptive
    average-pool bins; 1x1 lateral convs on the other three; a top-down
    pathway of bilinear upsampling and addition; 3x3 FPN convs; every level
    upsampled to the finest and fused by a 3x3 bottleneck; a 1x1 classifier.
    Resizing is bilinear with half-pixel centres and no antialiasing, which
    is PyTorch's `interpolate(mode="bilinear", align_corners=False)`.

    Args:
        channels: width of every conv block (transformers: `hidden_size`).
        num_classes: channels of the logits.
        pool_scales: output sizes of the PSP module's adaptive pools.
        data_format: "channels_last" or "channels_first" maps and logits.

    Called on a list of four (B, h_i, w_i, C) maps, finest first; returns
    (B, h_0, w_0, num_classes) logits ((B, C, h_i, w_i) maps and
    (B, num_classes, h_0, w_0) logits when channels first).
    """

    def __init__(self, channels, num_classes, pool_scales=(1, 2, 3, 6), data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_classes = num_classes
        self.pool_scales = tuple(pool_scales)
        self.data_format = data_format
        common = dict(dtype=self.dtype_policy, data_format=data_format)
        self.psp_pools = [
            AdaptiveAveragePooling2D(s, name=f"psp_pool_{j}", **common) for j, s in enumerate(self.pool_scales)
        ]
        self.psp_convs = [ConvBNReLU(channels, 1, name=f"psp_conv_{j}", **common) for j in range(len(self.pool_scales))]
        self.bottleneck = ConvBNReLU(channels, 3, name="bottleneck", **common)
        self.lateral_convs = [ConvBNReLU(channels, 1, name=f"lateral_conv_{j}", **common) for j in range(3)]
        self.fpn_convs = [ConvBNReLU(channels, 3, name=f"fpn_conv_{j}", **common) for j in range(3)]
        self.fpn_bottleneck = ConvBNReLU(channels, 3, name="fpn_bottleneck", **common)
        self.classifier = Conv2D(num_classes, 1, name="classifier", **common)

    def _with_channels(self, shape, channels):
        return image_shape_like(shape, self.data_format, channels=channels)

    def build(self, maps_shape):
        maps_shape = [tuple(s) for s in maps_shape]
        in_channels = maps_shape[3][channel_axis(self.data_format)]
        for pool, conv in zip(self.psp_pools, self.psp_convs):
            conv.build(pool.compute_output_shape(maps_shape[3]))
        self.bottleneck.build(self._with_channels(maps_shape[3], in_channels + len(self.pool_scales) * self.channels))
        for j, conv in enumerate(self.lateral_convs):
            conv.build(maps_shape[j])
        for j, conv in enumerate(self.fpn_convs):
            conv.build(self._with_channels(maps_shape[j], self.channels))
        self.fpn_bottleneck.build(self._with_channels(maps_shape[0], 4 * self.channels))
        self.classifier.build(self._with_channels(maps_shape[0], self.channels))
        self.built = True

    def _resized(self, x, like):
        return resize_bilinear(x, spatial_dims(like.shape, self.data_format), self.data_format)

    def _pyramid_pooling(self, x, training):
        pooled = [self._resized(conv(pool(x), training=training), x) for pool, conv in zip(self.psp_pools, self.psp_convs)]
        return self.bottleneck([x] + pooled, training=training)

    def call(self, maps, training=None):
        laterals = [conv(m, training=training) for conv, m in zip(self.lateral_convs, maps[:3])]
        laterals.append(self._pyramid_pooling(maps[3], training))
        for i in (3, 2, 1):
            laterals[i - 1] = laterals[i - 1] + self._resized(laterals[i], laterals[i - 1])
        outputs = [conv(lateral, training=training) for conv, lateral in zip(self.fpn_convs, laterals[:3])]
        outputs.append(laterals[3])
        fused = [outputs[0]] + [self._resized(o, outputs[0]) for o in outputs[1:]]
        return self.classifier(self.fpn_bottleneck(fused, training=training))

    def compute_output_shape(self, maps_shape):
        return self._with_channels(tuple(maps_shape[0]), self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "num_classes": self.num_classes,
                "pool_scales": self.pool_scales,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTFCNHead(keras.layers.Layer):
    """The FCN auxiliary head: `num_convs` conv blocks, optional input concat, 1x1 classifier.

    Args:
        in_channels: channels of the input map.
        num_classes: channels of the logits.
        channels: width of the conv blocks (and the classifier's input).
        num_convs: Conv-BN-ReLU blocks of `kernel_size` before the classifier;
            with 0 the classifier reads the input, so `channels` must equal
            `in_channels`.
        concat_input: concatenate the input with the conv output and fuse them
            with one more Conv-BN-ReLU (`conv_cat`).
        kernel_size: odd kernel size of the conv blocks; "same" padding, as
            PyTorch's `padding=kernel_size // 2`.
        data_format: "channels_last" or "channels_first" input and logits.
    """

    def __init__(
        self,
        in_channels,
        num_classes,
        channels=256,
        num_convs=1,
        concat_input=False,
        kernel_size=3,
        data_format="channels_last",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_convs == 0 and channels != in_channels:
            raise ValueError(f"With num_convs=0, channels ({channels}) must equal in_channels ({in_channels}).")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for PyTorch-equal padding, got {kernel_size}.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.concat_input = concat_input
        self.kernel_size = kernel_size
        self.data_format = data_format
        common = dict(dtype=self.dtype_policy, data_format=data_format)
        self.convs = [ConvBNReLU(channels, kernel_size, name=f"conv_{k}", **common) for k in range(num_convs)]
        self.conv_cat = ConvBNReLU(channels, kernel_size, name="conv_cat", **common) if concat_input else None
        self.classifier = Conv2D(num_classes, 1, name="classifier", **common)

    def build(self, inputs_shape):
        shape = tuple(inputs_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = image_shape_like(shape, self.data_format, channels=self.channels)
        if self.conv_cat is not None:
            self.conv_cat.build(image_shape_like(shape, self.data_format, channels=self.in_channels + self.channels))
        self.classifier.build(image_shape_like(shape, self.data_format, channels=self.channels))
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
        if self.conv_cat is not None:
            x = self.conv_cat([inputs, x], training=training)
        return self.classifier(x)

    def compute_output_shape(self, inputs_shape):
        return image_shape_like(tuple(inputs_shape), self.data_format, channels=self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_channels": self.in_channels,
                "num_classes": self.num_classes,
                "channels": self.channels,
                "num_convs": self.num_convs,
                "concat_input": self.concat_input,
                "kernel_size": self.kernel_size,
                "data_format": self.data_format,
            }
        )
        return config
