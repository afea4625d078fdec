"""timm `beit_*` and `beitv2_*` model directories, as timm saves them.

A timm directory (`timm.models.save_for_hf`, or a `timm/...` hub repo) holds
`config.json` with "architecture" (e.g. "beit_base_patch16_224"),
"num_classes", optionally "global_pool", "model_args" (keyword arguments
given to `timm.create_model`) and "pretrained_cfg" (input_size, mean, std,
interpolation, crop_pct, crop_mode: the image converter is timm's evaluation
transform), plus `model.safetensors` or `pytorch_model.bin` (read with
`weights_only=True`).

timm's BEiT state dict uses the original unilm names (`blocks.{i}.attn.qkv`,
`q_bias`/`v_bias`, `gamma_1/2`, `fc_norm`/`head`, `rel_pos_bias` for a
shared table), so the key table and the loading logic are unilm's
(`keras_beit.convert.unilm`); this module reads timm's config. newer timm
versions do not store `relative_position_index`; older ones did, and it is
skipped either way. LayerNorm epsilon is 1e-6, timm's.

A new `image_shape` resizes the tables once on load as timm's
`checkpoint_filter_fn` does when `timm.create_model(..., pretrained=True,
img_size=...)` loads the file: by default `position_resize="geometric_linear"`
(piecewise-linear on the original's geometric grid; "geometric" is the
original's cubic spline, timm's with TIMM_USE_SCIPY_INTERP=1), and absolute
position embeddings with antialiased bicubic.

`global_pool` is timm's: "avg" (mean of the patch tokens, then `fc_norm`) or
"token" (the CLS token after the final `norm`). With "" timm applies the
head to every token; such a directory loads as a backbone (the normalised
sequence), not with its head as a classifier.
"""

import math
import os

from keras_hub.src.utils.preset_utils import load_json

from keras_beit.convert.checkpoint_io import read_state_dict
from keras_beit.convert.unilm import ORIGINAL_LAYER_NORM_EPSILON
from keras_beit.convert.unilm import OriginalLayoutLoader
from keras_beit.convert.unilm import infer_backbone_config
from keras_beit.convert.unilm import normalize_state
from keras_beit.models.image_classifier import BEiTImageClassifier
from keras_beit.models.image_converter import BEIT_MEAN
from keras_beit.models.image_converter import BEIT_STD
from keras_beit.models.preset_loading import register_preset_loader

_BASE = dict(embed_dim=768, depth=12, num_heads=12)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16)
# timm's registered BEiT entry points (timm/models/beit.py). All have
# patch 16, mlp_ratio 4, qkv biases, per-block relative tables and no
# absolute positions; init_values only says whether layer scale exists.
ARCHITECTURES = {
    "beit_base_patch16_224": dict(img_size=224, init_values=0.1, **_BASE),
    "beit_base_patch16_384": dict(img_size=384, init_values=0.1, **_BASE),
    "beit_large_patch16_224": dict(img_size=224, init_values=1e-5, **_LARGE),
    "beit_large_patch16_384": dict(img_size=384, init_values=1e-5, **_LARGE),
    "beit_large_patch16_512": dict(img_size=512, init_values=1e-5, **_LARGE),
    "beitv2_base_patch16_224": dict(img_size=224, init_values=1e-5, **_BASE),
    "beitv2_large_patch16_224": dict(img_size=224, init_values=1e-5, **_LARGE),
}
_DEFAULTS = dict(
    patch_size=16, in_chans=3, mlp_ratio=4.0, qkv_bias=True, use_abs_pos_emb=False,
    use_rel_pos_bias=True, use_shared_rel_pos_bias=False, global_pool="avg",
)
_UNSUPPORTED = ("swiglu_mlp", "scale_mlp", "attn_head_dim")


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def architecture_name(config):
    """The entry point of a timm config ("beit_base_patch16_224"), without a pretrained tag."""
    return str(config.get("architecture", "")).split(".")[0]


def timm_model_args(config):
    """The keyword arguments timm builds the model with: the entry point's, then config overrides."""
    name = architecture_name(config)
    args = {**_DEFAULTS, **ARCHITECTURES.get(name, {})}
    if "global_pool" in config:
        args["global_pool"] = config["global_pool"]
    # timm.create_model drops None arguments, so None keeps the entry point's value.
    args.update({k: v for k, v in (config.get("model_args") or {}).items() if v is not None})
    bad = [k for k in _UNSUPPORTED if args.get(k)]
    if bad:
        raise ValueError(f"timm BEiT options {bad} are not supported by keras_beit.")
    if args["global_pool"] not in ("avg", "token", ""):
        raise ValueError(f"timm global_pool must be 'avg', 'token' or ''; received {args['global_pool']!r}.")
    if args.get("use_fc_norm") is not None and bool(args["use_fc_norm"]) != (args["global_pool"] == "avg"):
        raise ValueError(
            f"timm use_fc_norm={args['use_fc_norm']} with global_pool={args['global_pool']!r} is not "
            "supported: keras_beit normalises after mean pooling ('avg') and before CLS pooling ('token')."
        )
    return args


def convert_backbone_config(config, state=None):
    """BEiTBackbone arguments for a timm BEiT config.

    Known entry points (ARCHITECTURES) and `model_args` give the
    architecture; for another `beit*` name it is read from the tensor shapes,
    as for an original checkpoint.
    """
    if architecture_name(config) not in ARCHITECTURES and not config.get("model_args"):
        if state is None:
            raise ValueError(f"Unknown timm BEiT architecture {config.get('architecture')!r}.")
        return infer_backbone_config(state)
    args = timm_model_args(config)
    height, width = _pair(args["img_size"])
    patch_size = args["patch_size"]
    if isinstance(patch_size, (list, tuple)):
        patch_size = patch_size[0]
    window = (height // patch_size, width // patch_size)
    return {
        "image_shape": (height, width, args["in_chans"]),
        "patch_size": patch_size,
        "hidden_dim": args["embed_dim"],
        "num_layers": args["depth"],
        "num_heads": args["num_heads"],
        "intermediate_dim": int(args["embed_dim"] * args["mlp_ratio"]),
        "use_absolute_position_embeddings": bool(args["use_abs_pos_emb"]),
        "use_relative_position_bias": bool(args["use_rel_pos_bias"]),
        "use_shared_relative_position_bias": bool(args["use_shared_rel_pos_bias"]),
        "use_mask_token": False,
        "layer_scale_init_value": float(args.get("init_values") or 0.0),
        "layer_norm_epsilon": ORIGINAL_LAYER_NORM_EPSILON,
        "use_mean_pooling": args["global_pool"] == "avg",
        "window_size": window,
    }


# timm's data-config defaults (timm.data.constants), for a config without them.
TIMM_DEFAULT_CROP_PCT = 0.875


def image_converter_config(config, image_size=None, crop=True):
    """BEiTImageConverter arguments for timm's evaluation transform of the pretrained_cfg.

    Mean, std and interpolation are timm's; so is the centre crop: images
    are resized to `floor(size / crop_pct)` (keeping their aspect ratio in
    crop_mode "center", stretched in "squash") and the model's size is cut
    from the centre. `image_size` is the size the model was built for; by
    default the pretrained_cfg's input_size. With `crop=False` the whole
    image is resized to that size, as a segmenter's maps need.
    """
    pretrained = config.get("pretrained_cfg") or {}
    interpolation = pretrained.get("interpolation", "bicubic")
    if image_size is None:
        image_size = tuple(pretrained["input_size"][1:]) if "input_size" in pretrained else None
    crop_pct = pretrained.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    crop_mode = pretrained.get("crop_mode") or "center"
    if crop and crop_mode not in ("center", "squash"):
        raise ValueError(
            f"timm crop_mode {crop_mode!r} is not supported by BEiTImageConverter; it supports 'center' "
            "and 'squash'. Load the model with preprocessor=None and preprocess the images yourself."
        )
    size = tuple(image_size) if image_size is not None else None
    cropped = crop and size is not None
    return {
        "image_size": tuple(math.floor(n / crop_pct) for n in size) if cropped else size,
        "crop_size": size if cropped else None,
        "keep_aspect_ratio": cropped and crop_mode == "center",
        "mean": tuple(pretrained.get("mean", BEIT_MEAN)),
        "std": tuple(pretrained.get("std", BEIT_STD)),
        "interpolation": interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
    }


class TimmLoader(OriginalLayoutLoader):
    """A timm BEiT directory; weights are read on first use."""

    default_position_resize = "geometric_linear"
    antialias_positions = True

    def __init__(self, preset, config):
        super().__init__(preset, config)
        self._state = None
        self._backbone_config = None

    @property
    def state(self):
        if self._state is None:
            # normalize_state also gives a qkv_bias=False model its (zero) q/v biases.
            self._state = normalize_state(read_state_dict(self.preset))
        return self._state

    @property
    def backbone_config(self):
        if self._backbone_config is None:
            known = architecture_name(self.config) in ARCHITECTURES or self.config.get("model_args")
            self._backbone_config = convert_backbone_config(self.config, None if known else self.state)
        return self._backbone_config

    def converter_config(self):
        # timm scales its crop to the model's size (floor(size / crop_pct)), so it is computed for that size.
        size = self.image_size or tuple(self.backbone_config["image_shape"][:2])
        return image_converter_config(self.config, size, crop=self.evaluation_crop)

    def _unpooled(self):
        # global_pool '': timm runs its head on every token, which no keras_beit task does.
        return timm_model_args(self.config)["global_pool"] == ""

    def checkpoint_task(self):
        return None if self._unpooled() else super().checkpoint_task()  # convert writes a backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        per_token_head = self._unpooled() and "head.weight" in self.state
        if per_token_head and load_task_weights and issubclass(cls, BEiTImageClassifier):
            raise ValueError(
                f"{self.preset} has global_pool='': timm applies its head to every token, and a "
                "BEiTImageClassifier pools first. Load it with BEiTBackbone.from_preset, or pass "
                "num_classes for a new head on the CLS token."
            )
        return super().load_task(cls, load_weights, load_task_weights, **kwargs)


def is_timm_beit(config):
    """timm's BEiT v1/v2 (BEiT-3 is a different model, timm's VisionTransformer)."""
    return architecture_name(config).startswith(("beit_", "beitv2_"))


@register_preset_loader
def timm_loader(preset):
    """A TimmLoader for a directory whose config.json names a timm BEiT architecture."""
    if not (isinstance(preset, str) and os.path.isfile(os.path.join(preset, "config.json"))):
        return None
    config = load_json(preset, "config.json")
    if "architecture" in config and is_timm_beit(config):
        return TimmLoader(preset, config)
    return None
