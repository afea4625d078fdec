"""`from_preset` for keras_beit classes, with pluggable checkpoint formats.

keras-hub picks a preset loader from a fixed list of formats. keras_beit's
converters (transformers, timm, unilm) register a factory here instead, so the
model classes can load those formats without importing any converter.
"""

import keras
import numpy as np
from keras_hub.models import Backbone
from keras_hub.models import Preprocessor
from keras_hub.models import Task
from keras_hub.src.utils import preset_utils

_LOADER_FACTORIES = []
# Where Keras' weights file keeps a saved classifier's pooler LayerNorm: Keras
# names a model's layers by class, and the pooler holds its norm as `norm`.
_SAVED_POOLER_NORM = "layers/b_ei_t_pooler/norm/vars"


def is_keras_beit_preset(config):
    """Whether a keras-hub preset's config.json holds a keras_beit backbone."""
    return str(config.get("registered_name", "")).startswith("keras_beit>")


class BEiTPresetLoader(preset_utils.KerasPresetLoader):
    """keras-hub's loader for saved keras_beit presets, mending three keras-hub 0.32 behaviours.

    keras-hub loads only the backbone when `num_classes` is given; the pooler
    LayerNorm sits in the task (it is transformers' `pooler.layernorm`) and
    was trained with the blocks, so it is kept, as it is from a checkpoint.
    A quantized backbone keeps its saved policy map, and a task saved under a
    mixed policy loads in the current one. Both entry points use it: ours and
    keras-hub's own `from_preset` (see keras_hub_integration).
    """

    def _saved_dtype(self):
        return (self.config.get("config") or {}).get("dtype")

    def _refuse_layout_change(self, kwargs):
        # The saved image shape and weights are in the saved layout; another
        # data_format would be read against them (an image "width" of 3).
        asked, saved = kwargs.get("data_format"), (self.config.get("config") or {}).get("data_format")
        if asked is not None and saved is not None and asked != saved:
            raise ValueError(
                f"{self.preset} is a keras-hub preset saved {saved}, and it loads that way; data_format={asked!r} "
                "applies when a checkpoint is converted on load. Load the source checkpoint with "
                f"from_preset(source, data_format={asked!r}) instead."
            )

    def load_backbone(self, cls, load_weights, **kwargs):
        self._refuse_layout_change(kwargs)
        return super().load_backbone(cls, load_weights, **kwargs)

    def get_backbone_kwargs(self, **kwargs):
        backbone_kwargs, kwargs = super().get_backbone_kwargs(**kwargs)
        saved = self._saved_dtype()
        if backbone_kwargs.get("dtype") is None and isinstance(saved, dict) and saved.get("class_name") == "DTypePolicyMap":
            # keras-hub would pass dtype=None over a quantized backbone's saved
            # policy map and rebuild its layers unquantized.
            del backbone_kwargs["dtype"]
        return backbone_kwargs, kwargs

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        self._refuse_layout_change(kwargs)
        saved = self._saved_dtype()
        policy = saved.get("config", {}).get("name", "") if isinstance(saved, dict) else str(saved or "")
        if kwargs.get("dtype") is None and policy.startswith("mixed_"):
            # keras-hub 0.32's task loader reads a saved mixed policy's name
            # as a dtype and fails; what it means to do for float policies is
            # to load in the current default policy, so that is passed.
            kwargs["dtype"] = keras.config.dtype_policy()
        task = super().load_task(cls, load_weights, load_task_weights, **kwargs)
        norm = getattr(getattr(task, "pooler", None), "norm", None)
        if load_weights and not load_task_weights and norm is not None and self._saved_classifier():
            import h5py

            with h5py.File(preset_utils.get_file(self.preset, preset_utils.TASK_WEIGHTS_FILE), "r") as f:
                if _SAVED_POOLER_NORM not in f:
                    raise ValueError(
                        f"{self.preset}'s task weights have no pooler LayerNorm at {_SAVED_POOLER_NORM}; "
                        "it was saved by a keras_beit this version cannot read."
                    )
                saved = f[_SAVED_POOLER_NORM]
                norm.load_own_variables({key: np.asarray(saved[key]) for key in saved})
        return task

    def _saved_classifier(self):
        files = (preset_utils.TASK_CONFIG_FILE, preset_utils.TASK_WEIGHTS_FILE)
        if not all(preset_utils.check_file_exists(self.preset, name) for name in files):
            return False
        task_config = preset_utils.load_json(self.preset, preset_utils.TASK_CONFIG_FILE)
        return task_config.get("registered_name") == "keras_beit>BEiTImageClassifier"


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
        # A new head (num_classes given) never loads the preset's head.
        return loader.load_task(cls, load_weights, "num_classes" not in kwargs, **kwargs)
    if issubclass(cls, Preprocessor):
        config_file = kwargs.pop("config_file", preset_utils.PREPROCESSOR_CONFIG_FILE)
        return loader.load_preprocessor(cls, config_file, **kwargs)
    return loader.load_image_converter(cls, **kwargs)
