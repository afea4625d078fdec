"""Assigning checkpoint tensors to Keras variables, with strict key checking."""

import re

import numpy as np

from keras_beit.layers.heap import release_free_heap


def linear(x):
    """PyTorch Linear (out, in) to Keras Dense (in, out)."""
    return x.T


def conv(x):
    """PyTorch Conv2d (out, in, kh, kw) to Keras Conv2D (kh, kw, in, out)."""
    return np.transpose(x, (2, 3, 1, 0))


def dense_weights(layer, key, bias=True):
    """A PyTorch Linear `{key}.weight`/`.bias` onto a Keras Dense."""
    yield layer.kernel, f"{key}.weight", linear
    if bias:
        yield layer.bias, f"{key}.bias", None


def norm_weights(layer, key):
    """A PyTorch LayerNorm or BatchNorm affine `{key}.weight`/`.bias` onto gamma/beta."""
    yield layer.gamma, f"{key}.weight", None
    yield layer.beta, f"{key}.bias", None


def kept_pooler_norm(task, state, key):
    """The checkpoint's pooler LayerNorm `{key}`, for a classifier given a new head.

    transformers' `from_pretrained(..., num_labels=N, ignore_mismatched_sizes=True)`
    and the original fine-tuning start only the final Dense afresh; the pooler
    norm (`pooler.layernorm`, `fc_norm`) was trained with the blocks and is kept.
    """
    norm = getattr(getattr(task, "pooler", None), "norm", None)
    if norm is not None and f"{key}.weight" in state:
        yield from norm_weights(norm, key)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model built from it."""


_TRIM_EVERY_BYTES = 64 * 2**20


def _stand_in(value):
    """An array of `value`'s shape that takes no memory: a transform's result
    shape is known without reading a stored tensor (transforms only reshape)."""
    return np.broadcast_to(np.float32(0), tuple(value.shape))


def assign(pairs, state, skip=(), allow_unused=None):
    """Copies `state[key]` (transformed) into each `(variable, key, transform)`.

    Every key in `state` must be used, match a `skip` pattern, or match
    `allow_unused` (keys that belong to parts of the checkpoint the caller
    chose not to load, such as another task's head). Missing, unexpected and
    mis-shaped keys are collected and reported together, and nothing is
    assigned, or read from a `StoredTensor`, unless everything fits. Then
    each value is read, converted and assigned in turn, so one tensor at a
    time exists beside the model.
    """
    missing, misshaped, fitting = [], [], []
    used = set()
    for variable, key, transform in pairs:
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = state[key]
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        shape = _stand_in(value) if transform is None else transform(_stand_in(value))
        if tuple(shape.shape) != tuple(variable.shape):
            misshaped.append(
                f"{key}: checkpoint {tuple(value.shape)}, model expects "
                f"{tuple(variable.shape)} (after conversion)"
            )
            continue
        fitting.append((variable, key, transform))
    ignored = [re.compile(p) for p in skip] + ([re.compile(allow_unused)] if allow_unused else [])
    unexpected = sorted(
        k for k in state if k not in used and not any(p.search(k) for p in ignored)
    )
    if missing or unexpected or misshaped:
        lines = ["The checkpoint does not fit the model."]
        for title, keys in (
            ("Missing keys", missing),
            ("Unexpected keys", unexpected),
            ("Mis-shaped keys", misshaped),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)}): " + ", ".join(keys[:20]))
                if len(keys) > 20:
                    lines[-1] += f", ... ({len(keys) - 20} more)"
        raise CheckpointMismatchError("\n".join(lines))
    since_trim, read_key = 0, None
    for variable, key, transform in fitting:
        # A fused qkv weight feeds three variables in a row: it is read once.
        if key != read_key:
            read = value = None  # the last tensor goes before the next is read
            read_key, read = key, np.asarray(state[key])
        value = read if transform is None else transform(read)
        variable.assign(value.astype(variable.dtype))
        since_trim += value.nbytes
        # Each trim walks the heap: after every tensor it cost BEiT-L 1.3 s of a
        # 4 s load, and without any jax's load peaked 490 MB higher.
        if since_trim >= _TRIM_EVERY_BYTES:
            release_free_heap()
            since_trim = 0
    release_free_heap()
