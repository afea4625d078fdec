"""Running a built sublayer from inside its parent's call."""

import keras

try:
    from keras.src.backend import get_autocast_scope, get_keras_mask
except ImportError:  # a Keras without them takes Layer.__call__ every time
    get_autocast_scope = get_keras_mask = None


def _keeps_autocast_scope(layer):
    # The scope Layer.__call__ would leave in place; anything else needs it.
    scope = get_autocast_scope()
    if scope is None:
        return layer.compute_dtype == layer.variable_dtype
    return layer.autocast and scope.dtype == layer.compute_dtype


# torch.nn.Module.__call__ runs these hooks; a direct call would skip them.
_OWN_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _OWN_HOOKS)
if keras.backend.backend() == "torch":
    from torch.nn.modules import module as _torch_module
else:
    _torch_module = None


def _has_torch_hooks(layer):
    if _torch_module is None:
        return False
    return any(getattr(layer, name) for name in _OWN_HOOKS) or any(
        getattr(_torch_module, name, None) for name in _GLOBAL_HOOKS
    )


def _runs_as_is(layer, inputs):
    return (
        get_autocast_scope is not None
        and layer.built
        and keras.ops.is_tensor(inputs)
        and get_keras_mask(inputs) is None
        and keras.backend.standardize_dtype(inputs.dtype) == layer.input_dtype
        and layer.quantization_mode is None
        and getattr(layer, "_remat_mode", None) is None
        and layer.activity_regularizer is None
        and not _has_torch_hooks(layer)
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
    symbolic or non-tensor input, another dtype, a mask, quantization,
    remat, torch module hooks, a distribution, a different autocast scope)
    goes through __call__. What is lost is the sublayer's name scope, which
    only names ops in traces and profiles.
    """
    if _runs_as_is(layer, inputs):
        return layer.call(inputs, **kwargs)
    return layer(inputs, **kwargs)
