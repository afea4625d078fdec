"""Where the channels sit in an image-shaped tensor, in either data format."""


def channel_axis(data_format):
    return -1 if data_format == "channels_last" else 1


def spatial_dims(shape, data_format):
    """(height, width) of a (B, H, W, C) or a (B, C, H, W) shape."""
    return tuple(shape[1:3]) if data_format == "channels_last" else tuple(shape[2:4])


def image_shape_like(shape, data_format, channels=None, spatial=None):
    """`shape` with its channels and/or its (height, width) replaced."""
    height, width = spatial_dims(shape, data_format) if spatial is None else tuple(spatial)
    channels = shape[channel_axis(data_format)] if channels is None else channels
    if data_format == "channels_last":
        return (shape[0], height, width, channels)
    return (shape[0], channels, height, width)
