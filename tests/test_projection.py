"""The blocks' projections: Dense arithmetic, one fused op on torch."""

import keras
import numpy as np
import pytest

from keras_beit.layers.projection import Projection

torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the fused path is torch's")


def _projection(rng, rows_shape, units=5, use_bias=True, dtype=None):
    layer = Projection(units, use_bias=use_bias, dtype=dtype)
    layer.build(rows_shape)
    kernel = rng.normal(size=(rows_shape[-1], units))
    bias = rng.normal(size=(units,))
    layer.set_weights([kernel.astype("float32"), bias.astype("float32")] if use_bias else [kernel.astype("float32")])
    return layer, kernel, bias if use_bias else np.zeros(units)


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 4)], ids=["rows", "tokens"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_projection_is_inputs_times_kernel_plus_bias(shape, use_bias, rng):
    layer, kernel, bias = _projection(rng, shape, use_bias=use_bias)
    x = rng.normal(size=shape)
    actual = keras.ops.convert_to_numpy(layer(x.astype("float32")))
    np.testing.assert_allclose(actual, x @ kernel + bias, atol=1e-5)


def test_projection_under_mixed_bfloat16_computes_in_bfloat16(rng):
    layer, kernel, bias = _projection(rng, (6, 8), dtype="mixed_bfloat16")
    x = rng.normal(size=(6, 8))
    outputs = layer(x.astype("float32"))
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    # bfloat16 keeps 8 significant bits: inputs, weights and the result each round by up to 2^-8.
    expected = x @ kernel + bias
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32")), expected, atol=0.05 * np.abs(expected).max()
    )


def _torch_ops_of(layer, inputs):
    """The aten ops a call dispatches, by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with RecordOps() as recorded:
        layer(inputs)
    return set(recorded.ops)


@torch_only
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_projection_of_rows_is_one_addmm_on_torch(dtype, rng):
    import torch

    layer, _, _ = _projection(rng, (6, 4), dtype=dtype)
    recorded = _torch_ops_of(layer, torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32))
    assert "addmm" in recorded
    assert not {"mm", "matmul", "add"} & recorded


@torch_only
def test_projection_gradients_on_torch_are_those_of_a_matmul_plus_bias(rng):
    import torch

    layer, kernel, _ = _projection(rng, (6, 4))
    x = rng.normal(size=(6, 4))
    upstream = rng.normal(size=(6, 5))
    x_torch = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    torch.sum(torch.tensor(upstream, dtype=torch.float32) * layer(x_torch)).backward()
    np.testing.assert_allclose(x_torch.grad.numpy(), upstream @ kernel.T, atol=1e-5)
    np.testing.assert_allclose(layer.kernel.value.grad.numpy(), x.T @ upstream, atol=1e-5)
    np.testing.assert_allclose(layer.bias.value.grad.numpy(), upstream.sum(axis=0), atol=1e-5)


def test_projection_with_lora_adds_the_low_rank_update(rng):
    layer, kernel, bias = _projection(rng, (6, 4))
    layer.enable_lora(2)
    lora_a, lora_b = rng.normal(size=(4, 2)), rng.normal(size=(2, 5))
    layer.lora_kernel_a.assign(lora_a.astype("float32"))
    layer.lora_kernel_b.assign(lora_b.astype("float32"))
    x = rng.normal(size=(6, 4))
    # Keras scales the update by lora_alpha / rank, and lora_alpha defaults to the rank.
    expected = x @ (kernel + lora_a @ lora_b) + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x.astype("float32"))), expected, atol=1e-5)
