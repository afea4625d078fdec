"""Running a built sublayer from inside its parent's call."""

import keras

try:
    from keras.src.backend import get_autocast_scope
except ImportError:  # a Keras without it takes Layer.__call__ every time
    get_autocast_scope = None


def _keeps_autocast_scope(layer):
    # The scope Layer.__call__ would leave in place; anything else needs it.
    scope = get_autocast_scope()
    if scope is None:
        return layer.compute_dtype == layer.variable_dtype
    return layer.autocast and scope.dtype == layer.compute_dtype


def _runs_as_is(layer, inputs):
    return (
        get_autocast_scope is not None
        and layer.built
        and not isinstance(inputs, keras.KerasTensor)
        and getattr(inputs, "_keras_mask", None) is None
        and keras.backend.standardize_dtype(inputs.dtype) == layer.input_dtype
        and layer.quantization_mode is None
        and getattr(layer, "_remat_mode", None) is None
        and layer.activity_regularizer is None
        and not getattr(layer, "_forward_hooks", None)
        and not getattr(layer, "_forward_pre_hooks", None)
        and keras.distribution.distribution() is None
        and _keeps_autocast_scope(layer)
    )


def call_sublayer(layer, inputs, **kwargs):
    """`layer(inputs, **kwargs)`, skipping Keras' per-call bookkeeping where it would change nothing.

    Inside a parent's call, a built sublayer's input is already a tensor of
    its compute dtype with no mask, and the parent passes `training` on.
    Layer.__call__ then only re-derives that, at a cost of about 0.1 ms of
    Python per call on eager torch, where it is paid on every step: BEiT-B
    makes nine such calls per block. Whatever __call__ would change (a
    symbolic input, another dtype, a mask, quantization, remat, hooks, a
    distribution, a different autocast scope) goes through __call__.
    """
    if _runs_as_is(layer, inputs):
        return layer.call(inputs, **kwargs)
    return layer(inputs, **kwargs)
