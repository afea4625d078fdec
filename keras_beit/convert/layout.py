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


class SettledLayout:
    """For loaders: the image converter takes the layout the backbone was built in."""

    data_format = None

    def settle_data_format(self, config, kwargs):
        config, kwargs = with_data_format(config, kwargs)
        self.data_format = kwargs["data_format"]
        return config, kwargs

    def converter_layout(self, kwargs):
        return kwargs if self.data_format is None else {"data_format": self.data_format, **kwargs}
