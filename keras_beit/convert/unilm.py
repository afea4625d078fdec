"""Original microsoft/unilm BEiT checkpoints (`.pth`), and the key table timm shares.

`from_preset("path/to/file.pth")` (or `.pt`, `.bin`) loads the files the
BEiT, BEiT v2 and DiT authors released:

- pre-training (`*_pt22k.pth`, DiT `dit-pts/*.pth`, v2 `*_pt1k*.pth`):
  `mask_token`, one shared table `rel_pos_bias.relative_position_bias_table`
  (BEiT) or `pos_embed` (DiT), the blocks, `norm` and `lm_head`;
- fine-tuned (`*_ft22k`, `*_ft1k`, `*_ft22kto1k`, DiT `dit-fts/*.pth`): a
  table per block `blocks.{i}.attn.relative_position_bias_table` (or
  `pos_embed`), `fc_norm` + `head` (mean pooling) or `norm` + `head` (CLS).

The state dict sits under "model" or "module" (BEiT v2 files kept DDP's
"module"); stored `relative_position_index` buffers are skipped and v2's
patch-aggregation head (`cls_pt_layers.*`, `cls_pt_norm`, `cls_pt_lm_head`)
is dropped. Files are read with `torch.load(weights_only=True)`; a pickle
that would run code is refused before any of it runs. mmseg segmentation
files (under "state_dict", keys prefixed `backbone.`) are left to
`keras_beit.convert.mmseg`, which builds on this module.

There is no config: the architecture is read from tensor shapes (width
from `cls_token`, depth from the block indices, heads from a table's width,
the patch grid from a table's or `pos_embed`'s length, layer scale from
`gamma_1`, mean pooling from `fc_norm`). LayerNorm epsilon is 1e-6, the
original's. A model without any table (DiT) does not reveal its head
count: hidden // 64, which every released model has; pass `num_heads` to
override.

Loading a shared-table (pre-training) checkpoint into a model with per-block
tables, e.g. `BEiTImageClassifier.from_preset(path, num_classes=10,
use_relative_position_bias=True, use_shared_relative_position_bias=False)`,
copies the table into every block, as the original fine-tuning does. A new
`image_shape` resizes the tables once on load (`position_resize=`, see
`keras_beit.convert.resize`; "geometric" by default, the original's).
"""

import argparse
import os
import re

import numpy as np
from keras_hub.models import ImageSegmenterPreprocessor
from keras_hub.src.utils.preset_utils import PREPROCESSOR_CONFIG_FILE
from keras_hub.src.utils.preset_utils import PresetLoader

from keras_beit.convert.checkpoint_io import MappedTensor
from keras_beit.convert.checkpoint_io import read_pickled_state_dict
from keras_beit.convert.checkpoint_io import to_numpy
from keras_beit.convert.layout import SettledLayout
from keras_beit.convert.resize import TABLE_SUFFIX
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
from keras_beit.models.image_converter import BEIT_MEAN
from keras_beit.models.image_converter import BEIT_STD
from keras_beit.models.masked_image_modeler import BEiTMaskedImageModeler
from keras_beit.models.preset_loading import register_preset_loader

ORIGINAL_LAYER_NORM_EPSILON = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILE_SUFFIXES = (".pth", ".pt", ".bin")
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"
POSITION_EMBEDDINGS = "pos_embed"
# Buffers the model recomputes; original files store them, timm's newer files do not.
SKIPPED_KEYS = (r"relative_position_index$", r"num_batches_tracked$")
# BEiT v2 pre-training's patch-aggregation head: not part of the encoder.
DROPPED_KEYS = re.compile(r"^cls_pt_")
# Head keys a backbone (or a task with a new head) leaves unused.
HEAD_KEYS = r"^(fc_norm|head|norm|lm_head)\."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


# === Key table (shared with keras_beit.convert.timm) ===


def _qkv_rows(part):
    """The q (0), k (1) or v (2) rows of a fused (3D, D) `qkv.weight`, as a Keras kernel."""

    def transform(weight):
        rows = weight.shape[0] // 3
        return weight[part * rows:(part + 1) * rows].T

    return transform


def backbone_weights(backbone, prefix=""):
    """(variable, key, transform) for every backbone variable, in unilm/timm names."""
    embedding = backbone.patch_embedding
    yield embedding.cls_token, f"{prefix}cls_token", None
    if backbone.use_mask_token:
        yield embedding.mask_token, f"{prefix}mask_token", None
    if backbone.use_absolute_position_embeddings:
        yield embedding.position_embeddings, f"{prefix}{POSITION_EMBEDDINGS}", None
    yield embedding.projection.kernel, f"{prefix}patch_embed.proj.weight", conv
    yield embedding.projection.bias, f"{prefix}patch_embed.proj.bias", None
    if backbone.shared_relative_position_bias is not None:
        yield (
            backbone.shared_relative_position_bias.relative_position_bias_table,
            f"{prefix}{SHARED_TABLE}",
            None,
        )
    for i, block in enumerate(backbone.blocks):
        key = f"{prefix}blocks.{i}"
        attention = block.attention
        yield from _norm(block.norm_before, f"{key}.norm1")
        yield attention.query.kernel, f"{key}.attn.qkv.weight", _qkv_rows(0)
        yield attention.key.kernel, f"{key}.attn.qkv.weight", _qkv_rows(1)
        yield attention.value.kernel, f"{key}.attn.qkv.weight", _qkv_rows(2)
        yield attention.query.bias, f"{key}.attn.q_bias", None
        yield attention.value.bias, f"{key}.attn.v_bias", None
        yield from _dense(attention.output_dense, f"{key}.attn.proj")
        if backbone.relative_position_biases:
            yield (
                backbone.relative_position_biases[i].relative_position_bias_table,
                f"{key}.attn.{TABLE_SUFFIX}",
                None,
            )
        if block.layer_scale_init_value > 0:
            yield block.lambda_1, f"{key}.gamma_1", None
            yield block.lambda_2, f"{key}.gamma_2", None
        yield from _norm(block.norm_after, f"{key}.norm2")
        yield from _dense(block.fc1, f"{key}.mlp.fc1")
        yield from _dense(block.fc2, f"{key}.mlp.fc2")
    if backbone.final_norm is not None:
        yield from _norm(backbone.final_norm, f"{prefix}norm")


def head_weights(task, prefix=""):
    """(variable, key, transform) for the task's own variables."""
    if isinstance(task, BEiTImageClassifier):
        if task.pooler.norm is not None:
            yield from _norm(task.pooler.norm, f"{prefix}fc_norm")
        yield from _dense(task.output_dense, f"{prefix}head")
    elif isinstance(task, BEiTMaskedImageModeler):
        yield from _norm(task.norm, f"{prefix}norm")
        yield from _dense(task.lm_head, f"{prefix}lm_head")
    else:
        raise ValueError(f"No unilm/timm head mapping for {type(task).__name__}.")


# === Reading and normalising a state dict ===


def unwrap_checkpoint(checkpoint):
    """The state dict inside an original checkpoint: under "model", "module" or "state_dict"."""
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return checkpoint


def normalize_state(state):
    """Drops v2's patch-aggregation head and the "module." (DDP) and "encoder."
    prefixes, as the original fine-tuning scripts do; fills absent qkv biases.

    A model built with `qkv_bias=False` (a BEiT v2 fine-tuning option) has no
    `q_bias`/`v_bias`; zeros are the same computation.
    """
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    if "encoder.cls_token" in state and "cls_token" not in state:
        state = {key[len("encoder."):] if key.startswith("encoder.") else key: value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not DROPPED_KEYS.search(key)}
    if "blocks.0.attn.qkv.weight" in state and not any(k.endswith("attn.q_bias") for k in state):
        for key in [k for k in state if k.endswith("attn.qkv.weight")]:
            zeros = np.zeros(state[key].shape[0] // 3, state[key].dtype)
            state[key[: -len("qkv.weight")] + "q_bias"] = zeros
            state[key[: -len("qkv.weight")] + "v_bias"] = zeros
    return state


def is_original_layout(state):
    """Whether a flat state dict has unilm/timm BEiT encoder keys (no mmseg `backbone.` prefix)."""
    return "cls_token" in state and "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def read_original_file(path):
    """The unpickled contents of an original `.pth`, read with `weights_only=True`.

    `argparse.Namespace` (the training arguments some released files keep
    next to the weights) is also allowed: it only ever receives attribute
    values, which are unpickled under the same restrictions.
    """
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return read_pickled_state_dict(path)


def tensors_only(state):
    """The array entries of a state dict, as numpy."""
    return to_numpy({k: v for k, v in state.items() if hasattr(v, "detach") or isinstance(v, (np.ndarray, MappedTensor))})


def read_checkpoint(path):
    """The tensors of an original `.pth`, or None when the file is not in this layout."""
    state = unwrap_checkpoint(read_original_file(path))
    if not isinstance(state, dict):
        return None
    tensors = normalize_state(tensors_only(state))
    if not is_original_layout(tensors):
        return None
    return tensors


def _isqrt_exact(value, what):
    root = int(round(value**0.5))
    if root * root != value:
        raise ValueError(
            f"Cannot read the patch grid from {what}: {value} is not a square. Only square "
            "patch grids can be read from an original checkpoint; pass image_shape and window_size."
        )
    return root


def checkpoint_window(state):
    """The (h, w) patch grid of the position tables, or None when there are none."""
    windows = []
    for key, value in state.items():
        if key.endswith(TABLE_SUFFIX):
            side = _isqrt_exact(value.shape[0] - 3, f"{key} with {value.shape[0]} rows")
            windows.append(((side + 1) // 2,) * 2)
    if POSITION_EMBEDDINGS in state:
        side = _isqrt_exact(state[POSITION_EMBEDDINGS].shape[1] - 1, POSITION_EMBEDDINGS)
        windows.append((side, side))
    if len(set(windows)) > 1:
        raise ValueError(f"The checkpoint's position tables disagree on the patch grid: {sorted(set(windows))}.")
    return windows[0] if windows else None


def infer_backbone_config(state, default_image_size=224):
    """BEiTBackbone arguments read from the tensor shapes of an original state dict."""
    hidden_dim = state["cls_token"].shape[-1]
    _, channels, patch_height, patch_width = state["patch_embed.proj.weight"].shape
    if patch_height != patch_width:
        raise ValueError(f"Only square patches are supported; the checkpoint has {patch_height} x {patch_width}.")
    num_layers = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, state) if m)
    tables = [value for key, value in state.items() if key.endswith(TABLE_SUFFIX)]
    window = checkpoint_window(state) or (default_image_size // patch_width,) * 2
    has_head_norm = "fc_norm.weight" in state or "lm_head.weight" in state
    return {
        "image_shape": (window[0] * patch_width, window[1] * patch_width, channels),
        "patch_size": patch_width,
        "hidden_dim": hidden_dim,
        "num_layers": num_layers,
        # Every released model has 64-wide heads; a table's width is the head count.
        "num_heads": tables[0].shape[1] if tables else hidden_dim // 64,
        "intermediate_dim": state["blocks.0.mlp.fc1.weight"].shape[0],
        "use_absolute_position_embeddings": POSITION_EMBEDDINGS in state,
        "use_relative_position_bias": f"blocks.0.attn.{TABLE_SUFFIX}" in state,
        "use_shared_relative_position_bias": SHARED_TABLE in state,
        "use_mask_token": "mask_token" in state,
        "layer_scale_init_value": 0.1 if "blocks.0.gamma_1" in state else 0.0,
        "layer_norm_epsilon": ORIGINAL_LAYER_NORM_EPSILON,
        # `norm` is the final norm of a CLS-pooling model, unless a MIM head owns it.
        "use_mean_pooling": has_head_norm or "norm.weight" not in state,
        "window_size": window,
    }


def expand_shared_table(state, num_layers):
    """The shared table copied into every block's table, as the original fine-tuning loader does."""
    state = dict(state)
    table = state.pop(SHARED_TABLE)
    for i in range(num_layers):
        state[f"blocks.{i}.attn.{TABLE_SUFFIX}"] = table  # assigned (and read) once per block
    return state


# === Loading ===

_BACKBONE_ARGUMENTS = (
    "image_shape", "dtype", "window_size", "data_format", "out_indices", "use_fpn", "gradient_checkpointing",
    "drop_path_rate", "dropout_rate", "attention_dropout_rate", "layer_scale_init_value",
    "use_relative_position_bias", "use_shared_relative_position_bias", "use_mask_token",
    "use_mean_pooling", "num_heads", "layer_norm_epsilon", "position_resize",
)


class OriginalLayoutLoader(SettledLayout, PresetLoader):
    """Builds keras_beit models from a state dict in unilm/timm key names.

    Subclasses provide `state` (flat numpy tensors, normalised),
    `backbone_config` (BEiTBackbone arguments) and `converter_config()`.
    """

    default_position_resize = "geometric"
    antialias_positions = False
    _preprocessor_cls = None  # the preprocessor a task load asked for

    def __init__(self, preset, config):
        super().__init__(preset, config)
        self._resize_method = self.default_position_resize

    def check_backbone_class(self):
        return BEiTBackbone

    def get_backbone_kwargs(self, **kwargs):
        backbone_kwargs = {k: kwargs.pop(k) for k in _BACKBONE_ARGUMENTS if k in kwargs}
        return backbone_kwargs, kwargs

    def checkpoint_task(self):
        """The task class whose head this checkpoint carries, or None."""
        if "lm_head.weight" in self.state:
            return BEiTMaskedImageModeler
        if "head.weight" in self.state:
            return BEiTImageClassifier
        return None

    def prepared_state(self, backbone):
        """The state dict for `backbone`: shared table expanded if it wants per-block ones, tables resized."""
        state = self.state
        per_block_key = f"blocks.0.attn.{TABLE_SUFFIX}"
        if (
            backbone.relative_position_biases
            and backbone.shared_relative_position_bias is None
            and SHARED_TABLE in state
            and per_block_key not in state
        ):
            state = expand_shared_table(state, backbone.num_layers)
        source_window = tuple(self.backbone_config["window_size"])
        return resize_state(
            state, source_window, backbone.window_size, self._resize_method, (POSITION_EMBEDDINGS,),
            self.antialias_positions,
        )

    def load_backbone(self, cls, load_weights, **kwargs):
        config, kwargs = self.settle_data_format(self.backbone_config, kwargs)
        kwargs, self._resize_method = plan_resize(
            kwargs, config["window_size"], config["patch_size"], self.default_position_resize
        )
        backbone = cls(**{**config, **kwargs})
        self.settle_image_size(backbone)
        if load_weights:
            assign(backbone_weights(backbone), self.prepared_state(backbone), skip=SKIPPED_KEYS, allow_unused=HEAD_KEYS)
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        checkpoint_task = self.checkpoint_task()
        has_head = checkpoint_task is not None and issubclass(cls, checkpoint_task)
        if has_head and load_task_weights:
            if issubclass(cls, BEiTImageClassifier):
                kwargs.setdefault("num_classes", self.state["head.weight"].shape[0])
            if issubclass(cls, BEiTMaskedImageModeler):
                kwargs.setdefault("vocabulary_size", self.state["lm_head.weight"].shape[0])
        elif issubclass(cls, BEiTImageClassifier) and "num_classes" not in kwargs:
            raise ValueError(
                f"{self.preset} has no classification head; pass num_classes to add a new head."
            )
        elif issubclass(cls, BEiTImageSegmenter):
            kwargs = new_segmenter_arguments(kwargs, self.backbone_config["num_layers"], self.preset)
        task = super().load_task(cls, False, False, **kwargs)
        if load_weights:
            pairs = list(backbone_weights(task.backbone))
            state = self.prepared_state(task.backbone)
            if has_head and load_task_weights:
                assign(pairs + list(head_weights(task)), state, skip=SKIPPED_KEYS)
            else:
                kept = kept_pooler_norm(task, state, "fc_norm")
                assign(pairs + list(kept), state, skip=SKIPPED_KEYS, allow_unused=HEAD_KEYS)
        return task

    @property
    def evaluation_crop(self):
        """Whether the converter takes the classification evaluation crop.

        A segmenter labels every pixel of the whole image, and masked image
        modeling has no evaluation transform; a classifier, or a converter
        loaded on its own from a classification checkpoint, takes the crop.
        """
        if self._preprocessor_cls is not None:
            return not issubclass(self._preprocessor_cls, ImageSegmenterPreprocessor)
        task = self.checkpoint_task()
        return task is not None and issubclass(task, BEiTImageClassifier)

    def load_preprocessor(self, cls, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
        self._preprocessor_cls = cls
        return super().load_preprocessor(cls, config_file, **kwargs)

    def load_image_converter(self, cls, **kwargs):
        return self.settled_converter(cls, self.converter_config(), kwargs)


class UnilmLoader(OriginalLayoutLoader):
    """A microsoft/unilm `.pth` checkpoint; the architecture comes from tensor shapes."""

    def __init__(self, preset, state):
        self.state = state
        self.backbone_config = infer_backbone_config(state)
        super().__init__(preset, {"backbone": self.backbone_config})

    def converter_config(self):
        """The original evaluation transform: bicubic, its crop, and its mean/std.

        Below 384 the original fine-tuning code (BEiT, BEiT v2, DiT) resizes
        the shorter side to `int(size / (224 / 256))` and crops the model's
        size from the centre; at 384 and above BEiT v1 and DiT resize the
        shorter side to the size and crop, BEiT v2 stretches the whole image.
        BEiT v1 and DiT normalise with mean = std = 0.5; BEiT v2 with the
        ImageNet statistics. Nothing in a fine-tuned v2 file says it is v2,
        so this goes by the file name ("beitv2"); pass mean/std otherwise.
        """
        v2 = "beitv2" in os.path.basename(self.preset).lower()
        height, width = self.image_size or self.backbone_config["image_shape"][:2]
        normalization = {
            "mean": IMAGENET_MEAN if v2 else BEIT_MEAN,
            "std": IMAGENET_STD if v2 else BEIT_STD,
            "interpolation": "bicubic",
        }
        if not self.evaluation_crop or (v2 and min(height, width) >= 384):
            return {"image_size": (height, width), **normalization}
        crop_pct = 224 / 256 if min(height, width) < 384 else 1.0
        resize = (int(height / crop_pct), int(width / crop_pct))
        return {"image_size": resize, "crop_size": (height, width), "keep_aspect_ratio": True, **normalization}


@register_preset_loader
def unilm_loader(preset):
    """A UnilmLoader for a `.pth`/`.pt`/`.bin` file in the original layout, else None."""
    if not (isinstance(preset, str) and preset.lower().endswith(FILE_SUFFIXES) and os.path.isfile(preset)):
        return None
    state = read_checkpoint(preset)
    if state is None:
        return None  # e.g. an mmseg file (keys under `backbone.`) or a transformers state dict
    return UnilmLoader(preset, state)


def refuse_unread_checkpoint_file(preset):
    """Tried after every format: a checkpoint file no loader took gets an error that says why.

    keras-hub would otherwise report a missing config.json, or an unknown
    preset name for a mistyped path.
    """
    if not (isinstance(preset, str) and preset.lower().endswith(FILE_SUFFIXES)):
        return None
    if not os.path.isfile(preset):
        raise FileNotFoundError(f"No checkpoint file at {preset!r}.")
    checkpoint = read_original_file(preset)
    state = unwrap_checkpoint(checkpoint)
    found = sorted(state)[:12] if isinstance(state, dict) else type(state).__name__
    raise ValueError(
        f"{preset} is not a BEiT checkpoint keras_beit can read. An original (unilm, DiT, data2vec) file holds "
        "cls_token, patch_embed.proj.weight and blocks.0.attn.qkv.weight, at the top level or under 'model', "
        "'module' or 'state_dict'; an mmseg segmentation file holds them under 'state_dict' with a 'backbone.' "
        f"prefix, next to decode_head.* and auxiliary_head.* only. Its top-level keys: "
        f"{sorted(checkpoint)[:12] if isinstance(checkpoint, dict) else type(checkpoint).__name__}; "
        f"its state dict's first keys: {found}."
    )
