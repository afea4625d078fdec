"""Reading checkpoint files as data: safetensors first, pickles only weights-only."""

import json
import os
import sys
import zipfile

import ml_dtypes
import numpy as np

from keras_beit.layers.heap import file_mapping
from keras_beit.layers.heap import release_mapped_pages

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"


# safetensors' dtype names. bfloat16 is ml_dtypes' (a Keras dependency), as
# safetensors reads it; a type missing here (float8) is left as None.
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


class StoredTensor:
    """One tensor of a safetensors file, read from the file when it is used as an array.

    Converters check every key and shape first and then assign one variable
    at a time, so a checkpoint read as these costs the model and one tensor,
    not the whole state dict beside the model. Read whole, a BEiT-L
    checkpoint (1.2 GB) peaked at three times its size: the model, the arrays
    and the file's mapped pages. `np.asarray(stored)` reads it (each time).
    """

    __slots__ = ("path", "key", "shape", "dtype")

    def __init__(self, path, key, shape, dtype):
        self.path, self.key, self.shape, self.dtype = path, key, tuple(shape), dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __array__(self, dtype=None, copy=None):
        from safetensors import safe_open

        with safe_open(self.path, framework="numpy") as f:
            value = f.get_tensor(self.key)
        return value if dtype is None else value.astype(dtype, copy=False)

    def __repr__(self):
        return f"StoredTensor({self.key!r}, shape={self.shape}, dtype={self.dtype})"


class MappedTensor:
    """One tensor of a torch zip checkpoint, mapped from the file and copied out when used as an array.

    `torch.load(mmap=True)` maps the file rather than reading it, so a pickled
    checkpoint, like a safetensors file, costs the model and one tensor. A
    mapped page stays resident once read, until the whole file is unmapped,
    so each tensor's pages are dropped as soon as its copy exists (a tensor
    used again is read from the file again). bfloat16 is read as float32.
    The mapping is private: a write to `tensor` would be undone by the drop,
    so nothing writes to it.
    """

    __slots__ = ("tensor", "mapping")

    def __init__(self, tensor, mapping):
        self.tensor, self.mapping = tensor, mapping

    @property
    def shape(self):
        return tuple(self.tensor.shape)

    @property
    def ndim(self):
        return self.tensor.dim()

    @property
    def dtype(self):
        name = str(self.tensor.dtype).removeprefix("torch.")
        return np.dtype("float32" if name == "bfloat16" else name)

    def __array__(self, dtype=None, copy=None):
        import torch

        tensor = self.tensor
        value = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy().copy()
        storage = tensor.untyped_storage()
        release_mapped_pages(storage.data_ptr(), storage.nbytes(), self.mapping)
        return value if dtype is None else value.astype(dtype, copy=False)

    def __repr__(self):
        return f"MappedTensor(shape={self.shape}, dtype={self.dtype})"


def _mapped(structure, mapping):
    """The unpickled structure with each tensor in it wrapped as a `MappedTensor`."""
    if isinstance(structure, dict):
        return {key: _mapped(value, mapping) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_mapped(value, mapping) for value in structure)
    return MappedTensor(structure, mapping) if hasattr(structure, "untyped_storage") else structure


def _read_safetensors(path):
    from safetensors import safe_open

    path = os.path.abspath(path)  # read later, perhaps from another working directory
    with safe_open(path, framework="numpy") as f:
        tensors = {}
        for key in f.keys():
            stored = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(stored.get_dtype())
            tensors[key] = StoredTensor(path, key, stored.get_shape(), None if dtype is None else np.dtype(dtype))
        return tensors


def read_pickled_state_dict(path):
    """Loads a torch pickle with `weights_only=True`: tensors and plain containers only.

    A pickle that would import or call anything else is refused by torch's
    restricted unpickler before any of it runs. A zip checkpoint (what
    `torch.save` has written since torch 1.6) is mapped, its tensors as
    `MappedTensor`s; a file torch cannot map is read whole, as torch tensors.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs PyTorch (it is a pickled checkpoint). Install "
            "torch, or convert the checkpoint to safetensors."
        ) from error
    try:
        if _mappable(path):
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # not mappable after all; the whole read below loads it or gives torch's refusal
                pass
            else:
                return _mapped(checkpoint, file_mapping(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others
        raise ValueError(
            f"Refusing to load {path}: it is not a plain weights file that can "
            f"be read without running code ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})."
        ) from error


def _mappable(path):
    """Whether `path` is a zip checkpoint whose tensors torch maps as they are in the file.

    torch maps a compressed entry's bytes as if they were the tensor's
    (`torch.save` never compresses; a zip tool may). The mapping is private
    and writable: torch byte-swaps a file written on a machine of the other
    byte order in place, and dropping those pages would bring back the
    unswapped bytes.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        if any(entry.compress_type != zipfile.ZIP_STORED for entry in archive.infolist()):
            return False
        orders = [name for name in archive.namelist() if name.endswith("/byteorder")]
        return all(archive.read(name).decode().strip() == sys.byteorder for name in orders)


def to_numpy(tensors):
    """A flat {name: array} from torch tensors or numpy arrays; `MappedTensor`s stay as they are."""
    out = {}
    for name, value in tensors.items():
        if isinstance(value, MappedTensor):
            out[name] = value
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            value = value.numpy()
        out[name] = np.asarray(value)
    return out


def read_state_dict(directory):
    """All tensors of a transformers-style model directory: `StoredTensor`s from
    safetensors files, `MappedTensor`s from a zip pickle."""
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
