"""The data format of a backbone built from a converted checkpoint."""

from keras_hub.src.utils.keras_utils import standardize_data_format


def with_data_format(config, kwargs):
    """from_preset kwargs with `data_format` settled, and the config to match.

    Converters describe images channels last, (H, W, C). The backbone's data
    format is the one asked for in `kwargs`, else Keras' configured default,
    as for every keras-hub model; for "channels_first" the converted image
    shape becomes (C, H, W), unless the caller gave an image shape of their own.
    """
    data_format = standardize_data_format(kwargs.get("data_format"))
    if data_format == "channels_first" and "image_shape" not in kwargs:
        height, width, channels = config["image_shape"]
        config = {**config, "image_shape": (channels, height, width)}
    return config, {**kwargs, "data_format": data_format}


def sized_for(config, image_size):
    """Image converter arguments whose output is `image_size`, the size a model was built for.

    A checkpoint's processor resizes to its training size; a model loaded at
    another size (`from_preset(..., image_shape=...)`) needs images of its
    own. With a centre crop, the processor's resize-to-crop ratio is kept
    (256 -> 224 becomes 439 -> 384).
    """
    crop = config.get("crop_size")
    final = crop or config.get("image_size")
    if image_size is None or config.get("image_size") is None or tuple(final) == tuple(image_size):
        return config  # no resize (do_resize false): images go in as they are
    if crop is None:
        return {**config, "image_size": tuple(image_size)}
    resize = tuple(round(r * n / c) for r, n, c in zip(config["image_size"], image_size, crop))
    return {**config, "image_size": resize, "crop_size": tuple(image_size)}


class SettledLayout:
    """For loaders: the image converter takes the layout and size the backbone was built in."""

    data_format = None
    image_size = None  # the backbone's static (height, width), once built

    def settle_data_format(self, config, kwargs):
        config, kwargs = with_data_format(config, kwargs)
        self.data_format = kwargs["data_format"]
        return config, kwargs

    def settle_image_size(self, backbone):
        shape = backbone.image_shape
        height, width = shape[:2] if backbone.data_format == "channels_last" else shape[1:]
        self.image_size = (height, width) if height and width else None

    def converter_layout(self, kwargs):
        return kwargs if self.data_format is None else {"data_format": self.data_format, **kwargs}

    def settled_converter(self, cls, config, kwargs):
        """`cls` (an image converter) for the backbone: its layout, and images of its size."""
        return cls(**{**sized_for(config, self.image_size), **self.converter_layout(kwargs)})
