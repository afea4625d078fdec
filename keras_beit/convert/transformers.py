"""Hugging Face transformers BEiT checkpoints (model_type "beit" and "data2vec-vision").

Maps the keys that `save_pretrained` writes (the hub's legacy 4.x names, e.g.
`beit.encoder.layer.0.attention.attention.query.weight`) onto keras_beit
variables. Only file keys are used, never a live transformers model.
"""

import os
import re

from keras_hub.src.utils.preset_utils import PresetLoader
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json

from keras_beit.convert.checkpoint_io import read_state_dict
from keras_beit.convert.layout import SettledLayout
from keras_beit.convert.mmseg import FPN_KEYS
from keras_beit.convert.mmseg import fpn_weights
from keras_beit.convert.mmseg import segmentation_head_weights
from keras_beit.convert.resize import plan_resize
from keras_beit.convert.resize import resize_state
from keras_beit.convert.segmenter_defaults import new_segmenter_arguments
from keras_beit.convert.weights import assign
from keras_beit.convert.weights import conv
from keras_beit.convert.weights import dense_weights as _dense
from keras_beit.convert.weights import kept_pooler_norm
from keras_beit.convert.weights import norm_weights as _norm
from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.image_classifier import BEiTImageClassifier
from keras_beit.models.image_segmenter import BEiTImageSegmenter
from keras_beit.models.masked_image_modeler import BEiTMaskedImageModeler
from keras_beit.models.preprocessors import BEiTImageSegmenterPreprocessor
from keras_beit.models.preset_loading import register_preset_loader

MODEL_TYPES = ("beit", "data2vec-vision")
# Buffers that the model recomputes; old checkpoints store them.
SKIPPED_KEYS = (r"relative_position_index$", r"num_batches_tracked$")
# PIL's resample codes; LANCZOS (1), BOX (4) and HAMMING (5) have no Keras equivalent on every backend.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# save_pretrained writes the hub's legacy (4.x) key names, but a state_dict
# saved from a transformers 5 model in memory uses the new module names, and
# transformers 5 writes data2vec-vision's segmentation heads under new names
# too. Both are renamed to the legacy/mmseg names on read.
_RENAMES = (
    (r"(^|\.)layers\.(\d+)\.relative_position_bias\.",
     r"\1encoder.layer.\2.attention.attention.relative_position_bias."),
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
    (r"(^|\.)shared_position_bias\.", r"\1encoder.relative_position_bias."),
    (r"^fpn\.fpn1\.conv_transpose1\.", "fpn1.0."),
    (r"^fpn\.fpn1\.normalization\.", "fpn1.1."),
    (r"^fpn\.fpn1\.conv_transpose2\.", "fpn1.3."),
    (r"^fpn\.fpn2\.", "fpn2.0."),
    (r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv\.", r"decode_head.psp_modules.\1.1."),
    (r"^decode_head\.psp_bottleneck\.", "decode_head.bottleneck."),
    (r"^((?:decode|auxiliary)_head\..*)\.convolution\.weight$", r"\1.conv.weight"),
    (r"^((?:decode|auxiliary)_head\..*)\.normalization\.", r"\1.bn."),
)
_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in _RENAMES)


def legacy_names(state):
    """The state dict with transformers 5 module names mapped to the hub's legacy names."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


TAP_POINTS = ("original", "transformers")


def _segmentation_out_indices(config, tap_points):
    """Our 0-based tapped blocks for a BeitForSemanticSegmentation config.

    transformers takes hidden_states[i - 1] (the output of block i - 2) for
    each i in out_indices; the original code, which trained the official
    weights, takes the output of block i. "original" keeps the numbers as
    the original meant them; "transformers" reproduces transformers exactly.
    """
    if tap_points not in TAP_POINTS:
        raise ValueError(f"tap_points must be one of {TAP_POINTS}; received {tap_points!r}.")
    indices = config.get("out_indices") or config.get("segmentation_indices") or [3, 5, 7, 11]
    num_layers = config.get("num_hidden_layers", 12)
    if tap_points == "original" and max(indices) >= num_layers:
        raise ValueError(
            f"The config's out_indices {list(indices)} name blocks past the last of {num_layers} when read as the "
            "original code reads them (block i's output). Load it with tap_points=\"transformers\" to tap "
            "hidden_states[i - 1] (block i - 2's output), as transformers does."
        )
    return tuple(i - 2 if tap_points == "transformers" else i for i in indices)


def convert_backbone_config(config, tap_points="original"):
    """BEiTBackbone arguments from a transformers BeitConfig dict."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"Only the exact GELU is supported; the config has {config['hidden_act']!r}.")
    height, width = _pair(config.get("image_size", 224))
    patch_size = config.get("patch_size", 16)
    if isinstance(patch_size, (list, tuple)):
        patch_size = patch_size[0]
    return {
        "image_shape": (height, width, config.get("num_channels", 3)),
        "patch_size": patch_size,
        "hidden_dim": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "intermediate_dim": config.get("intermediate_size", 3072),
        "use_absolute_position_embeddings": config.get("use_absolute_position_embeddings", False),
        "use_relative_position_bias": config.get("use_relative_position_bias", False),
        "use_shared_relative_position_bias": config.get("use_shared_relative_position_bias", False),
        "use_mask_token": config.get("use_mask_token", False),
        "layer_scale_init_value": config.get("layer_scale_init_value", 0.1),
        "drop_path_rate": config.get("drop_path_rate", 0.1),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "layer_norm_epsilon": config.get("layer_norm_eps", 1e-12),
        "use_mean_pooling": config.get("use_mean_pooling", True),
        "window_size": (height // patch_size, width // patch_size),
        **_pyramid_config(config, tap_points),
    }


def _pyramid_config(config, tap_points):
    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForSemanticSegmentation"):
        return {"out_indices": _segmentation_out_indices(config, tap_points), "use_fpn": True}
    if architecture == "BeitBackbone" and config.get("out_indices"):
        # BeitBackbone's stage i is hidden_states[i], the output of block i - 1.
        return {
            "out_indices": tuple(i - 1 for i in config["out_indices"]),
            "use_fpn": bool(config.get("add_fpn", False)),
        }
    return {}


def backbone_weights(backbone, prefix, with_fpn=True):
    """(variable, key, transform) for every backbone variable (the pyramid's only `with_fpn`)."""
    embedding = backbone.patch_embedding
    yield embedding.cls_token, f"{prefix}embeddings.cls_token", None
    if backbone.use_mask_token:
        yield embedding.mask_token, f"{prefix}embeddings.mask_token", None
    if backbone.use_absolute_position_embeddings:
        yield embedding.position_embeddings, f"{prefix}embeddings.position_embeddings", None
    projection = f"{prefix}embeddings.patch_embeddings.projection"
    yield embedding.projection.kernel, f"{projection}.weight", conv
    yield embedding.projection.bias, f"{projection}.bias", None
    if backbone.shared_relative_position_bias is not None:
        yield (
            backbone.shared_relative_position_bias.relative_position_bias_table,
            f"{prefix}encoder.relative_position_bias.relative_position_bias_table",
            None,
        )
    for i, block in enumerate(backbone.blocks):
        layer = f"{prefix}encoder.layer.{i}"
        attention = f"{layer}.attention.attention"
        yield from _norm(block.norm_before, f"{layer}.layernorm_before")
        yield from _dense(block.attention.query, f"{attention}.query")
        yield from _dense(block.attention.key, f"{attention}.key", bias=False)
        yield from _dense(block.attention.value, f"{attention}.value")
        yield from _dense(block.attention.output_dense, f"{layer}.attention.output.dense")
        if backbone.relative_position_biases:
            yield (
                backbone.relative_position_biases[i].relative_position_bias_table,
                f"{attention}.relative_position_bias.relative_position_bias_table",
                None,
            )
        if block.layer_scale_init_value > 0:
            yield block.lambda_1, f"{layer}.lambda_1", None
            yield block.lambda_2, f"{layer}.lambda_2", None
        yield from _norm(block.norm_after, f"{layer}.layernorm_after")
        yield from _dense(block.fc1, f"{layer}.intermediate.dense")
        yield from _dense(block.fc2, f"{layer}.output.dense")
    if backbone.final_norm is not None:
        yield from _norm(backbone.final_norm, f"{prefix}layernorm")
    if backbone.fpn is not None and with_fpn:
        yield from fpn_weights(backbone.fpn)


def head_weights(task, prefix):
    """(variable, key, transform) for the task's own variables."""
    if isinstance(task, BEiTImageClassifier):
        if task.pooler.norm is not None:
            yield from _norm(task.pooler.norm, f"{prefix}pooler.layernorm")
        yield from _dense(task.output_dense, "classifier")
    elif isinstance(task, BEiTMaskedImageModeler):
        yield from _norm(task.norm, "layernorm")
        yield from _dense(task.lm_head, "lm_head")
    elif isinstance(task, BEiTImageSegmenter):
        yield from segmentation_head_weights(task)
    else:
        raise ValueError(f"No transformers head mapping for {type(task).__name__}.")


def key_prefix(state):
    """The base-model prefix of a checkpoint: "beit.", "data2vec_vision." or ""."""
    for prefix in ("beit.", "data2vec_vision."):
        if any(key.startswith(prefix) for key in state):
            return prefix
    return ""


_HEAD_FOR_ARCHITECTURE = {
    "ForImageClassification": BEiTImageClassifier,
    "ForMaskedImageModeling": BEiTMaskedImageModeler,
    "ForSemanticSegmentation": BEiTImageSegmenter,
}
_BACKBONE_ARGUMENTS = (
    "image_shape", "dtype", "window_size", "data_format", "out_indices", "use_fpn", "gradient_checkpointing",
    "drop_path_rate", "dropout_rate", "attention_dropout_rate", "layer_scale_init_value",
    "position_resize",
)


class TransformersLoader(SettledLayout, PresetLoader):
    """Builds keras_beit models from a transformers BEiT model directory."""

    def __init__(self, preset, config):
        super().__init__(preset, config)
        self._state = None
        self.tap_points = "original"

    def get_backbone_kwargs(self, **kwargs):
        backbone_kwargs = {k: kwargs.pop(k) for k in _BACKBONE_ARGUMENTS if k in kwargs}
        return backbone_kwargs, kwargs

    @property
    def state(self):
        if self._state is None:
            self._state = legacy_names(read_state_dict(self.preset))
        return self._state

    @property
    def architecture(self):
        return (self.config.get("architectures") or [""])[0]

    def checkpoint_task(self):
        """The task class whose head this checkpoint carries, or None for a base model."""
        return next(
            (task for suffix, task in _HEAD_FOR_ARCHITECTURE.items() if self.architecture.endswith(suffix)),
            None,
        )

    def check_backbone_class(self):
        return BEiTBackbone

    def load_backbone(self, cls, load_weights, **kwargs):
        self.tap_points = kwargs.pop("tap_points", self.tap_points)
        config, kwargs = self.settle_data_format(convert_backbone_config(self.config, self.tap_points), kwargs)
        kwargs, self.position_resize = plan_resize(
            kwargs, config["window_size"], config["patch_size"], self.default_position_resize
        )
        backbone = cls(**{**config, **kwargs})
        self.settle_image_size(backbone)
        if load_weights:
            self._assign(backbone)
        return backbone

    def _assign(self, backbone, task=None, kept=()):
        """Loads the base model's weights, and the task head's when `task` is given.

        Without a task, keys outside the base model (another task's head, the
        pooler) are left unused unless named in `kept`; with one, every key
        must be used.
        """
        prefix = key_prefix(self.state)
        # A classification or pre-training checkpoint has no pyramid: a
        # segmenter built on it starts its FPN fresh, as transformers does.
        with_fpn = any(re.match(FPN_KEYS, key) for key in self.state)
        pairs = list(backbone_weights(backbone, prefix, with_fpn))
        allow_unused = None
        if task is None:
            pairs += list(kept)
            outside = rf"^(?!{prefix})" if prefix else r"^(pooler|classifier|lm_head|layernorm)\."
            allow_unused = rf"{outside}|^{prefix}pooler\."
        else:
            pairs += list(head_weights(task, prefix))
        assign(pairs, self.resized_state(backbone), skip=SKIPPED_KEYS, allow_unused=allow_unused)

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        self.tap_points = kwargs.pop("tap_points", self.tap_points)
        checkpoint_task = self.checkpoint_task()
        has_head = checkpoint_task is not None and issubclass(cls, checkpoint_task)
        if has_head and load_task_weights:
            if issubclass(cls, BEiTImageClassifier):
                kwargs.setdefault("num_classes", self.config.get("num_labels") or len(self.config["id2label"]))
            if issubclass(cls, BEiTMaskedImageModeler):
                kwargs.setdefault("vocabulary_size", self.config.get("vocab_size", 8192))
            if issubclass(cls, BEiTImageSegmenter):
                for key, value in segmenter_config(self.config).items():
                    kwargs.setdefault(key, value)
        elif issubclass(cls, BEiTImageClassifier) and "num_classes" not in kwargs:
            raise ValueError(
                f"{self.preset} is a {self.architecture or 'base model'} checkpoint "
                "with no classification head; pass num_classes to add a new head."
            )
        elif issubclass(cls, BEiTImageSegmenter):
            kwargs = new_segmenter_arguments(kwargs, self.config.get("num_hidden_layers", 12), self.preset)
        task = super().load_task(cls, False, False, **kwargs)
        if load_weights:
            if has_head and load_task_weights:
                self._assign(task.backbone, task)
            else:
                pooler = f"{key_prefix(self.state)}pooler.layernorm"
                self._assign(task.backbone, kept=kept_pooler_norm(task, self.state, pooler))
        return task

    # --- Position tables resized once on load: from_preset(..., image_shape=(H, W, 3),
    # position_resize="bilinear" | "geometric" | "geometric_linear" | None); see keras_beit.convert.resize.
    # The default is transformers' own bilinear, so the result equals transformers at that size.
    default_position_resize = "bilinear"
    position_resize = default_position_resize

    def resized_state(self, backbone):
        """The state dict with its tables resized from the checkpoint's grid to `backbone.window_size`."""
        checkpoint_window = convert_backbone_config(self.config, self.tap_points)["window_size"]
        positions = (f"{key_prefix(self.state)}embeddings.position_embeddings",)
        return resize_state(self.state, checkpoint_window, backbone.window_size, self.position_resize, positions)

    def load_preprocessor(self, cls, config_file=None, **kwargs):
        if issubclass(cls, BEiTImageSegmenterPreprocessor) and check_file_exists(
            self.preset, "preprocessor_config.json"
        ):
            processor = load_json(self.preset, "preprocessor_config.json")
            # 4.x configs wrote "reduce_labels"; 5.x writes "do_reduce_labels".
            reduce = processor.get("do_reduce_labels", processor.get("reduce_labels", False))
            kwargs.setdefault("reduce_labels", reduce)
        return super().load_preprocessor(cls, **kwargs)

    def load_image_converter(self, cls, **kwargs):
        if check_file_exists(self.preset, "preprocessor_config.json"):
            config = image_converter_config(load_json(self.preset, "preprocessor_config.json"))
        else:
            # No processor saved: the official processors' settings at the model's size.
            config = {"image_size": _pair(self.config.get("image_size", 224))}
        return self.settled_converter(cls, config, kwargs)


def segmenter_config(config):
    """BEiTImageSegmenter arguments from a BeitConfig dict."""
    return {
        "num_classes": config.get("num_labels") or len(config["id2label"]),
        "pool_scales": tuple(config.get("pool_scales", (1, 2, 3, 6))),
        "use_auxiliary_head": config.get("use_auxiliary_head", True),
        "auxiliary_channels": config.get("auxiliary_channels", 256),
        "auxiliary_num_convs": config.get("auxiliary_num_convs", 1),
        "auxiliary_concat_input": config.get("auxiliary_concat_input", False),
        "auxiliary_loss_weight": config.get("auxiliary_loss_weight", 0.4),
        "ignore_index": config.get("semantic_loss_ignore_index", 255),
    }


def image_converter_config(processor):
    """BEiTImageConverter arguments from a BeitImageProcessor config dict."""
    size = processor.get("size", 224)
    if isinstance(size, dict):
        if set(size) != {"height", "width"}:
            raise ValueError(
                f"preprocessor_config.json has size {size}; BEiTImageConverter resizes to a fixed height and width "
                "(BEiT's processors use {'height': H, 'width': W}), not to an edge length that keeps the aspect "
                "ratio. Build the converter yourself with image_size=(H, W), or edit the config."
            )
        size = (size["height"], size["width"])
    else:
        size = _pair(size)
    resample = processor.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(
            f"preprocessor_config.json has resample={resample}; BEiTImageConverter supports PIL's NEAREST (0), "
            "BILINEAR (2) and BICUBIC (3). Build the converter yourself with another interpolation, or edit the config."
        )
    normalize = processor.get("do_normalize", True)
    crop = processor.get("crop_size", 224)
    if isinstance(crop, dict):
        crop = (crop["height"], crop["width"])
    return {
        "image_size": size if processor.get("do_resize", True) else None,
        "mean": tuple(processor.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0, 0.0, 0.0),
        "std": tuple(processor.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0, 1.0, 1.0),
        "rescale_factor": processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0,
        "crop_size": _pair(crop) if processor.get("do_center_crop", False) else None,
        "interpolation": _PIL_RESAMPLE[resample],
    }


@register_preset_loader
def transformers_loader(preset):
    """A TransformersLoader for a directory whose config.json is a BEiT config."""
    if not (isinstance(preset, str) and os.path.isfile(os.path.join(preset, "config.json"))):
        return None
    config = load_json(preset, "config.json")
    if config.get("model_type") in MODEL_TYPES:
        return TransformersLoader(preset, config)
    return None
