"""Original (microsoft/unilm) and timm BEiT files, written from a transformers state dict.

timm is not installed here (it is too heavy for this machine), so the timm
directories are written the way timm serialises a BEiT model: its
`state_dict()` in unilm key names, in `model.safetensors` or
`pytorch_model.bin`, next to a config.json with "architecture",
"num_classes", "model_args" and "pretrained_cfg" (timm `save_for_hf`). The
reference forward is always the transformers model whose weights the file
holds.

`to_original` is the inverse of transformers' conversion script
(`convert_beit_unilm_to_pytorch.py`, tabulated in hf_beit.md 3.3): it reads
the legacy key names that `save_pretrained` writes and produces the unilm
names, fusing query/key/value into `attn.qkv.weight` (rows q, k, v; the key
has no bias, so there is no `k_bias`).
"""

import json
import os
import re

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.numpy import save_file

LEGACY_TO_ORIGINAL = (
    (r"^beit\.embeddings\.cls_token$", "cls_token"),
    (r"^beit\.embeddings\.mask_token$", "mask_token"),
    (r"^beit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^beit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^beit\.encoder\.relative_position_bias\.", "rel_pos_bias."),
    (r"^beit\.encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^beit\.encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^beit\.encoder\.layer\.(\d+)\.attention\.attention\.query\.bias$", r"blocks.\1.attn.q_bias"),
    (r"^beit\.encoder\.layer\.(\d+)\.attention\.attention\.value\.bias$", r"blocks.\1.attn.v_bias"),
    (r"^beit\.encoder\.layer\.(\d+)\.attention\.attention\.relative_position_bias\.", r"blocks.\1.attn."),
    (r"^beit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^beit\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^beit\.encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^beit\.encoder\.layer\.(\d+)\.lambda_(\d)$", r"blocks.\1.gamma_\2"),
    (r"^beit\.layernorm\.", "norm."),  # CLS pooling: the final norm
    (r"^beit\.pooler\.layernorm\.", "fc_norm."),  # mean pooling
    (r"^classifier\.", "head."),
    (r"^layernorm\.", "norm."),  # masked image modeling: the head's norm
    (r"^lm_head\.", "lm_head."),
)
_QKV = re.compile(r"^beit\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight$")


def relative_position_index(window):
    """The (N + 1, N + 1) index buffer unilm stores, from original_and_timm.md 1.2's closed form."""
    height, width = window
    num_rel = (2 * height - 1) * (2 * width - 1) + 3
    coords = [(h, w) for h in range(height) for w in range(width)]
    index = np.zeros((len(coords) + 1,) * 2, "int64")
    for i, (hi, wi) in enumerate(coords):
        for j, (hj, wj) in enumerate(coords):
            index[1 + i, 1 + j] = (hi - hj + height - 1) * (2 * width - 1) + (wi - wj + width - 1)
    index[0, :] = num_rel - 3
    index[:, 0] = num_rel - 2
    index[0, 0] = num_rel - 1
    return index


def to_original(legacy, store_index=True):
    """unilm/timm state dict (numpy) from transformers' legacy keys.

    With `store_index`, every table gets its `relative_position_index`
    buffer, as the original files carry (newer timm files do not).
    """
    original, qkv = {}, {}
    for key, value in legacy.items():
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "beit." + key  # a bare BeitModel writes no prefix
        match = _QKV.match(key)
        if match:
            qkv.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        renamed = key
        for pattern, replacement in LEGACY_TO_ORIGINAL:
            renamed, count = re.subn(pattern, replacement, renamed)
            if count:
                break
        else:
            raise KeyError(f"No original name for {key}")
        original[renamed] = np.asarray(value)
    for layer, parts in qkv.items():
        original[f"blocks.{layer}.attn.qkv.weight"] = np.concatenate(
            [parts["query"], parts["key"], parts["value"]], axis=0
        )
    if store_index:
        for key in [k for k in original if k.endswith("relative_position_bias_table")]:
            side = int(round((original[key].shape[0] - 3) ** 0.5))
            window = ((side + 1) // 2,) * 2
            original[key.replace("bias_table", "index")] = relative_position_index(window)
    return original


def to_mmseg(legacy):
    """An mmseg ADE20K state dict from a BeitForSemanticSegmentation's legacy keys.

    The encoder goes through `to_original` and, with the feature pyramid,
    under `backbone.`; the heads keep their names (transformers kept
    mmseg's) except each classifier, which mmseg calls `conv_seg`.
    """
    encoder = {k: v for k, v in legacy.items() if k.startswith("beit.")}
    state = {f"backbone.{k}": v for k, v in to_original(encoder).items()}
    for key, value in legacy.items():
        if key.startswith(("fpn1.", "fpn2.")):
            state[f"backbone.{key}"] = np.asarray(value)
        elif key.startswith(("decode_head.", "auxiliary_head.")):
            state[re.sub(r"\.classifier\.", ".conv_seg.", key)] = np.asarray(value)
        elif not key.startswith("beit."):
            raise KeyError(f"No mmseg name for {key}")
    return state


def original_state(hf_directory, store_index=True):
    """The unilm state dict of a directory written by `save_pretrained`."""
    return to_original(load_file(os.path.join(hf_directory, "model.safetensors")), store_index)


def _torch(state):
    # np.array copies into a contiguous array and, unlike ascontiguousarray, keeps 0-d scalars 0-d.
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def save_pth(state, path, wrapper="model", **extra):
    """`torch.save({wrapper: state_dict, **extra}, path)`, as the unilm training scripts save."""
    torch.save({wrapper: _torch(state), **extra}, path)
    return str(path)


def save_mmseg(state, path, meta):
    """`torch.save({"state_dict": ..., "meta": meta}, path)`, as mmcv saves a segmentation checkpoint."""
    torch.save({"state_dict": _torch(state), "meta": meta}, path)
    return str(path)


def save_timm(state, directory, config, weights_file="model.safetensors"):
    """A timm `save_for_hf` directory: config.json plus the state dict in `weights_file`."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}  # non-persistent in timm
    if weights_file == "model.safetensors":
        save_file({k: np.array(v) for k, v in state.items()}, os.path.join(directory, weights_file))
    else:
        torch.save(_torch(state), os.path.join(directory, weights_file))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return str(directory)
