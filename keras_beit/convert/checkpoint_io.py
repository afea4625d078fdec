"""Reading checkpoint files as data: safetensors first, pickles only weights-only."""

import json
import os

import numpy as np

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"


def _read_safetensors(path):
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def read_pickled_state_dict(path):
    """Loads a torch pickle with `weights_only=True`: tensors and plain containers only.

    A pickle that would import or call anything else is refused by torch's
    restricted unpickler before any of it runs.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs PyTorch (it is a pickled checkpoint). Install "
            "torch, or convert the checkpoint to safetensors."
        ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others
        raise ValueError(
            f"Refusing to load {path}: it is not a plain weights file that can "
            f"be read without running code ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})."
        ) from error


def to_numpy(tensors):
    """A flat {name: np.ndarray} from torch tensors or numpy arrays."""
    out = {}
    for name, value in tensors.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            value = value.numpy()
        out[name] = np.asarray(value)
    return out


def read_state_dict(directory):
    """All tensors of a transformers-style model directory, as numpy arrays."""
    single = os.path.join(directory, SAFETENSORS_FILE)
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(os.path.join(directory, shard)))
        return tensors
    pickled = os.path.join(directory, PYTORCH_FILE)
    if os.path.exists(pickled):
        return to_numpy(read_pickled_state_dict(pickled))
    raise FileNotFoundError(
        f"No weights in {directory}: expected {SAFETENSORS_FILE}, "
        f"{SAFETENSORS_INDEX} or {PYTORCH_FILE}."
    )
