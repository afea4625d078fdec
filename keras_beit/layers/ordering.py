"""Holding a computation back until another one has run."""

import keras
from keras import ops


def computed_after(value, dependency):
    """`value` (a tensor or a structure of them), unchanged, but computed from `dependency`.

    TensorFlow's graph executor runs an op as soon as its inputs exist, and
    XLA schedules it where its heuristics like. A tensor that depends on
    weights alone, such as a block's relative position bias, is then built at
    the start of the forward pass and held to the block that reads it: every
    block's at once (1.5 GB for BEiT-B at 640). Keras has no ordering op, and
    XLA on CPU drops jax's optimization barriers before it schedules, so the
    order is a data dependency: zero, computed from one element of
    `dependency`, is subtracted from `value`. Subtracting +0 leaves every
    value, and the sign of every zero, as it was.
    """
    first = dependency[(0,) * len(dependency.shape)]
    # isnan() is 0 or 1 whatever the element (x * 0 would be NaN for an
    # infinite x), and no gradient flows through it.
    return keras.tree.map_structure(lambda v: ops.subtract(v, ops.cast(ops.isnan(first), v.dtype) * 0), value)
