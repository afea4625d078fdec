"""`from_preset` for keras_beit classes, with pluggable checkpoint formats.

keras-hub picks a preset loader from a fixed list of formats. keras_beit's
converters (transformers, timm, unilm) register a factory here instead, so the
model classes can load those formats without importing any converter.
"""

import keras
from keras_hub.models import Backbone
from keras_hub.models import Preprocessor
from keras_hub.models import Task
from keras_hub.src.utils import preset_utils

_LOADER_FACTORIES = []


def register_preset_loader(factory):
    """Adds `factory(preset) -> PresetLoader | None`, tried before keras-hub's."""
    _LOADER_FACTORIES.append(factory)
    return factory


def get_preset_loader(preset):
    for factory in _LOADER_FACTORIES:
        loader = factory(preset)
        if loader is not None:
            return loader
    return preset_utils.get_preset_loader(preset)


def _saved_policy(loader):
    """The dtype policy name a keras-hub preset's backbone was saved with, or ""."""
    dtype = (getattr(loader, "config", None) or {}).get("config", {}).get("dtype")
    return dtype.get("config", {}).get("name", "") if isinstance(dtype, dict) else str(dtype or "")


@classmethod
def routed_from_preset(cls, preset, load_weights=True, **kwargs):
    """keras-hub's `from_preset`, routed through keras_beit's registered loaders.

    Assigned as `from_preset` in each keras_beit class body, so the classes
    keep their keras-hub base as their first base (keras-hub derives preset
    metadata from it).
    """
    loader = get_preset_loader(preset)
    if isinstance(loader, preset_utils.KerasPresetLoader) and "position_resize" in kwargs:
        # Only the checkpoint converters resize tables on load; a keras-hub
        # preset would pass the keyword on to keras.Model, which ignores it.
        raise ValueError(
            f"position_resize applies when a checkpoint is converted on load (a transformers or timm directory, a "
            f".pth file); {preset!r} is a keras-hub preset, whose stored tables are resized bilinearly at call time "
            "when image_shape changes. Load the source checkpoint with from_preset(source, image_shape=..., "
            "position_resize=...) instead."
        )
    backbone_cls = loader.check_backbone_class()
    if issubclass(cls, Backbone):
        if not issubclass(backbone_cls, cls):
            raise ValueError(
                f"The preset {preset!r} holds a {backbone_cls.__name__}, "
                f"which is not a {cls.__name__}."
            )
        return loader.load_backbone(backbone_cls, load_weights, **kwargs)
    if cls.backbone_cls != backbone_cls:
        cls = preset_utils.find_subclass(preset, cls, backbone_cls)
    if issubclass(cls, Task):
        if kwargs.get("dtype") is None and _saved_policy(loader).startswith("mixed_"):
            # keras-hub 0.32's task loader reads a saved mixed policy's name
            # as a dtype and fails; what it means to do for float policies is
            # to load in the current default policy, so that is passed.
            kwargs["dtype"] = keras.config.dtype_policy()
        # A new head (num_classes given) never loads the preset's head.
        return loader.load_task(cls, load_weights, "num_classes" not in kwargs, **kwargs)
    if issubclass(cls, Preprocessor):
        config_file = kwargs.pop("config_file", preset_utils.PREPROCESSOR_CONFIG_FILE)
        return loader.load_preprocessor(cls, config_file, **kwargs)
    return loader.load_image_converter(cls, **kwargs)
