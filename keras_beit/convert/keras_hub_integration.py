"""Makes keras-hub's own `from_preset` entry points understand keras_beit's presets.

keras-hub picks a loader from a fixed set (`TransformersPresetLoader`,
`TimmPresetLoader`) and has no registry for new checkpoint formats. So that
`keras_hub.models.ImageClassifier.from_preset("beit_base_patch16_224")` and
the like work after `import keras_beit`, those two classes hand BEiT
configs to keras_beit's loaders, and `KerasPresetLoader` hands saved
keras_beit presets to its subclass `BEiTPresetLoader`; every other model type
is untouched. This is
the only place keras_beit changes keras-hub behaviour, and it relies on
keras-hub internals, which is why pyproject pins keras-hub's minor version.
"""

from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.timm.preset_loader import TimmPresetLoader
from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader

from keras_beit.convert.timm import is_timm_beit
from keras_beit.convert.transformers import MODEL_TYPES
from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.preset_loading import BEiTPresetLoader
from keras_beit.models.preset_loading import get_preset_loader
from keras_beit.models.preset_loading import is_keras_beit_preset
from keras_beit.convert.catalogue import bundled_path
from keras_beit.presets import BUNDLED
from keras_beit.presets import CATALOGUE


def _is_beit(config):
    return config.get("model_type") in MODEL_TYPES or is_timm_beit(config)


def _divert(loader_cls):
    original_new = loader_cls.__new__

    def __new__(cls, preset, config):
        if _is_beit(config):
            # Not an instance of cls, so Python skips cls.__init__.
            return get_preset_loader(preset)
        if original_new is object.__new__:
            return object.__new__(cls)
        return original_new(cls, preset, config)

    loader_cls.__new__ = staticmethod(__new__)


def _divert_saved_presets():
    original_new = preset_utils.KerasPresetLoader.__new__

    def __new__(cls, preset, config):
        if cls is preset_utils.KerasPresetLoader and is_keras_beit_preset(config):
            cls = BEiTPresetLoader  # a subclass, so Python runs __init__ as usual
        if original_new is object.__new__:
            return object.__new__(cls)
        return original_new(cls, preset, config)

    preset_utils.KerasPresetLoader.__new__ = staticmethod(__new__)


def register_catalogue():
    """Lists the catalogue in `BEiTBackbone.presets` and keras-hub's preset names."""
    presets = {}
    for name, entry in CATALOGUE.items():
        sources = entry["sources"]
        handle = f"hf://{sources.get('hf') or sources['timm']}"
        presets[name] = {
            "metadata": {"description": entry["description"], "path": "beit", "task": entry["task"]},
            "kaggle_handle": handle,
        }
    for name, entry in BUNDLED.items():
        presets[name] = {
            "metadata": {"description": entry["description"], "path": "beit", "task": entry["task"]},
            "kaggle_handle": bundled_path(name),
        }
    preset_utils.register_presets(presets, BEiTBackbone)


_divert(TransformersPresetLoader)
_divert(TimmPresetLoader)
_divert_saved_presets()
register_catalogue()
