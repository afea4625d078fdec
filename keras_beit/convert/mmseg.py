"""Original BEiT ADE20K segmentation checkpoints (mmsegmentation `.pth`).

`BEiTImageSegmenter.from_preset("beit_base_patch16_640_pt22k_ft22ktoade20k.pth")`
loads the files that unilm's `semantic_segmentation` code (mmseg UPerNet)
saved: `torch.save({"state_dict": ..., "meta": ...})`, with

- the encoder under `backbone.` in unilm names (per-block tables, no final
  norm: the original taps block outputs without one), and the feature
  pyramid `backbone.fpn1.{0,1,3}` (ConvTranspose2d, SyncBatchNorm,
  ConvTranspose2d) and `backbone.fpn2.0`;
- the UperNet head `decode_head.{psp_modules.{s}.1, bottleneck, lateral_convs.{j},
  fpn_convs.{j}, fpn_bottleneck}.{conv,bn}` and `decode_head.conv_seg`;
- the FCN head `auxiliary_head.convs.{k}.{conv,bn}` (and `conv_cat`) and
  `auxiliary_head.conv_seg`.

transformers' hub files keep these mmseg names for the heads (only
`conv_seg` became `classifier`), so this module also holds the key table
that `keras_beit.convert.transformers` uses for them.

The tapped blocks (`out_indices`, 0-based block outputs, the original's
meaning) and the PSP pool scales are read from the training config that
mmcv stores in `meta["config"]`; without it the official values are used
([3, 5, 7, 11] for 12 blocks, [7, 11, 15, 23] for 24; pool scales
(1, 2, 3, 6)). Head widths, class count and the auxiliary head's shape come
from the tensors. Preprocessing is the mmseg pipeline's: ImageNet mean/std,
bilinear resize to the training crop, labels reduced by one (ADE20K's
`reduce_zero_label`).
"""

import os
import re

from keras_beit.convert.unilm import FILE_SUFFIXES
from keras_beit.convert.unilm import IMAGENET_MEAN
from keras_beit.convert.unilm import IMAGENET_STD
from keras_beit.convert.unilm import SKIPPED_KEYS
from keras_beit.convert.unilm import OriginalLayoutLoader
from keras_beit.convert.unilm import backbone_weights as encoder_weights
from keras_beit.convert.unilm import infer_backbone_config
from keras_beit.convert.unilm import is_original_layout
from keras_beit.convert.unilm import normalize_state
from keras_beit.convert.unilm import read_original_file
from keras_beit.convert.unilm import tensors_only
from keras_beit.convert.segmenter_defaults import DEFAULT_OUT_INDICES
from keras_beit.convert.segmenter_defaults import DEFAULT_POOL_SCALES
from keras_beit.convert.weights import assign
from keras_beit.convert.weights import conv
from keras_beit.convert.weights import norm_weights as _norm
from keras_beit.models.image_segmenter import BEiTImageSegmenter
from keras_beit.models.preprocessors import BEiTImageSegmenterPreprocessor
from keras_beit.models.preset_loading import register_preset_loader

BACKBONE_PREFIX = "backbone."
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")
_HEAD_KEYS = r"^(decode_head|auxiliary_head)\."
FPN_KEYS = r"^fpn[12]\."


# === Key table: the feature pyramid and the UperNet/FCN heads, in mmseg names ===


def _conv(layer, key):
    # ConvTranspose2d stores (in, out, kh, kw) and Keras wants (kh, kw, out, in): the same transpose as Conv2d.
    yield layer.kernel, f"{key}.weight", conv
    if layer.use_bias:
        yield layer.bias, f"{key}.bias", None


def _batch_norm(layer, key):
    yield from _norm(layer, key)
    yield layer.moving_mean, f"{key}.running_mean", None
    yield layer.moving_variance, f"{key}.running_var", None


def _conv_module(block, key):
    """mmseg's ConvModule ({key}.conv, {key}.bn) onto a ConvBNReLU."""
    yield from _conv(block.conv, f"{key}.conv")
    yield from _batch_norm(block.norm, f"{key}.bn")


def fpn_weights(fpn):
    """(variable, key, transform) for a BEiTFPNNeck: `fpn1.{0,1,3}`, `fpn2.0`."""
    yield from _conv(fpn.fpn1_conv1, "fpn1.0")
    yield from _batch_norm(fpn.fpn1_norm, "fpn1.1")
    yield from _conv(fpn.fpn1_conv2, "fpn1.3")
    yield from _conv(fpn.fpn2_conv, "fpn2.0")


def segmentation_head_weights(task):
    """(variable, key, transform) for a BEiTImageSegmenter's heads; the classifiers are `*.classifier`."""
    decode = task.decode_head
    for j, block in enumerate(decode.psp_convs):
        yield from _conv_module(block, f"decode_head.psp_modules.{j}.1")
    yield from _conv_module(decode.bottleneck, "decode_head.bottleneck")
    for j, block in enumerate(decode.lateral_convs):
        yield from _conv_module(block, f"decode_head.lateral_convs.{j}")
    for j, block in enumerate(decode.fpn_convs):
        yield from _conv_module(block, f"decode_head.fpn_convs.{j}")
    yield from _conv_module(decode.fpn_bottleneck, "decode_head.fpn_bottleneck")
    yield from _conv(decode.classifier, "decode_head.classifier")
    if task.auxiliary_head is not None:
        auxiliary = task.auxiliary_head
        for k, block in enumerate(auxiliary.convs):
            yield from _conv_module(block, f"auxiliary_head.convs.{k}")
        if auxiliary.conv_cat is not None:
            yield from _conv_module(auxiliary.conv_cat, "auxiliary_head.conv_cat")
        yield from _conv(auxiliary.classifier, "auxiliary_head.classifier")


# === Reading ===


def mmseg_state(checkpoint):
    """The flat state dict of an mmseg BEiT checkpoint in our reading names, or None.

    `backbone.` is stripped (the encoder then has unilm names, the pyramid
    `fpn1.*`/`fpn2.*`) and each head's `conv_seg` becomes `classifier`.
    """
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        return None
    state = {}
    for key, value in tensors_only(checkpoint["state_dict"]).items():
        if key.startswith(BACKBONE_PREFIX):
            key = key[len(BACKBONE_PREFIX):]
        elif key.startswith(HEAD_PREFIXES):
            key = re.sub(r"\.conv_seg\.", ".classifier.", key)
        else:
            return None  # not an encoder-decoder segmentation checkpoint
        state[key] = value
    encoder = normalize_state({k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)})
    if not is_original_layout(encoder):
        return None
    return {**state, **encoder}


def _config_tuple(config_text, name):
    """A `name=[...]`/`name=(...)` list of ints from mmcv's config text, or None."""
    matches = re.findall(rf"\b{name}\s*=\s*[\[(]([\d,\s]+)[\])]", config_text or "")
    return tuple(int(x) for x in matches[-1].split(",") if x.strip()) if matches else None


def _count(state, pattern):
    return len({m.group(1) for m in map(re.compile(pattern).match, state) if m})


# === Loading ===


class MmsegLoader(OriginalLayoutLoader):
    """An original BEiT UperNet checkpoint: the backbone with its pyramid, and the segmenter's heads."""

    default_position_resize = "geometric"

    def __init__(self, preset, state, meta=None):
        self.state = state
        config_text = (meta or {}).get("config") if isinstance(meta, dict) else None
        config = infer_backbone_config(state)
        # None: no training config names the taps; from_preset's out_indices must (checked in load_backbone).
        out_indices = _config_tuple(config_text, "out_indices") or DEFAULT_OUT_INDICES.get(config["num_layers"])
        self.backbone_config = {**config, "out_indices": out_indices, "use_fpn": True}
        self.pool_scales = _config_tuple(config_text, "pool_scales") or DEFAULT_POOL_SCALES
        super().__init__(preset, {"backbone": self.backbone_config})

    def checkpoint_task(self):
        return BEiTImageSegmenter

    def segmenter_config(self):
        """BEiTImageSegmenter arguments read from the head tensors."""
        state = self.state
        auxiliary = "auxiliary_head.classifier.weight" in state
        config = {
            "num_classes": state["decode_head.classifier.weight"].shape[0],
            "pool_scales": self.pool_scales,
            "use_auxiliary_head": auxiliary,
        }
        if auxiliary:
            config.update(
                auxiliary_channels=state["auxiliary_head.classifier.weight"].shape[1],
                auxiliary_num_convs=_count(state, r"^auxiliary_head\.convs\.(\d+)\."),
                auxiliary_concat_input="auxiliary_head.conv_cat.conv.weight" in state,
            )
        return config

    def _pairs(self, backbone):
        pairs = list(encoder_weights(backbone))
        if backbone.fpn is not None:
            pairs += list(fpn_weights(backbone.fpn))
        return pairs

    def _unused(self, backbone):
        return _HEAD_KEYS if backbone.fpn is not None else f"{_HEAD_KEYS}|{FPN_KEYS}"

    def load_backbone(self, cls, load_weights, **kwargs):
        if self.backbone_config["out_indices"] is None and kwargs.get("out_indices") is None:
            raise ValueError(
                f"{self.preset} has {self.backbone_config['num_layers']} blocks and no training config naming "
                "the tapped blocks; pass out_indices (four 0-based block indices) to from_preset."
            )
        backbone = super().load_backbone(cls, False, **kwargs)
        if load_weights:
            state = self.prepared_state(backbone)
            assign(self._pairs(backbone), state, skip=SKIPPED_KEYS, allow_unused=self._unused(backbone))
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        with_heads = issubclass(cls, BEiTImageSegmenter) and load_task_weights
        if with_heads:
            kwargs = {**self.segmenter_config(), **kwargs}
        elif "num_classes" not in kwargs:
            raise ValueError(
                f"{self.preset} is a segmentation checkpoint; a {cls.__name__} needs num_classes for a new head."
            )
        task = super(OriginalLayoutLoader, self).load_task(cls, False, False, **kwargs)
        if load_weights:
            backbone = task.backbone
            pairs = self._pairs(backbone)
            if with_heads:
                pairs += list(segmentation_head_weights(task))
            unused = None if with_heads else self._unused(backbone)
            assign(pairs, self.prepared_state(backbone), skip=SKIPPED_KEYS, allow_unused=unused)
        return task

    def load_preprocessor(self, cls, config_file=None, **kwargs):
        if issubclass(cls, BEiTImageSegmenterPreprocessor):
            kwargs.setdefault("reduce_labels", True)  # ADE20K's reduce_zero_label
        return super().load_preprocessor(cls, **kwargs)

    def converter_config(self):
        height, width = self.backbone_config["image_shape"][:2]
        return {
            "image_size": (height, width),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bilinear",
        }


@register_preset_loader
def mmseg_loader(preset):
    """An MmsegLoader for a `.pth` file in mmseg's layout, else None."""
    if not (isinstance(preset, str) and preset.lower().endswith(FILE_SUFFIXES) and os.path.isfile(preset)):
        return None
    checkpoint = read_original_file(preset)
    state = mmseg_state(checkpoint)
    if state is None:
        return None
    return MmsegLoader(preset, state, checkpoint.get("meta"))
