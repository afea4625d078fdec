"""A block's sublayers skip Keras' Layer.__call__ unless it would change what they compute."""

import keras
import numpy as np
import pytest

from keras_beit.layers import sublayer
from keras_beit.layers.block import BEiTBlock
from keras_beit.layers.sublayer import call_sublayer


@pytest.fixture
def keras_calls(monkeypatch):
    """The names of the layers whose Layer.__call__ runs, in order."""
    names = []
    original = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        names.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    return names


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def _block(rng):
    block = BEiTBlock(8, 2, 16, name="block")
    block.build((1, 5, 8))
    block.set_weights([rng.normal(size=w.shape).astype("float32") for w in block.get_weights()])
    return block, rng.normal(size=(1, 5, 8)).astype("float32")


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("float32", ["block"]),
        # LayerNormalization opts out of autocasting, so only Layer.__call__ can lift the block's bfloat16 scope.
        ("mixed_bfloat16", ["block", "norm_before", "norm_after"]),
    ],
    indirect=["policy"],
)
def test_block_calls_through_keras_only_what_needs_it(policy, expected, keras_calls, rng):
    block, x = _block(rng)
    keras_calls.clear()
    block(x)
    assert keras_calls == expected


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
def test_block_outputs_are_those_of_calling_every_sublayer_through_keras(policy, monkeypatch, rng):
    block, x = _block(rng)
    direct = keras.ops.convert_to_numpy(keras.ops.cast(block(x), "float32"))
    monkeypatch.setattr(sublayer, "_runs_as_is", lambda layer, inputs: False)
    through_keras = keras.ops.convert_to_numpy(keras.ops.cast(block(x), "float32"))
    np.testing.assert_array_equal(direct, through_keras)


def _dense(rng):
    dense = keras.layers.Dense(3, name="dense")
    dense.build((2, 4))
    return dense, rng.normal(size=(2, 4))


def test_an_input_of_another_dtype_is_cast_by_keras(keras_calls, rng):
    dense, x = _dense(rng)
    outputs = call_sublayer(dense, keras.ops.convert_to_tensor(x, "float16"))
    assert keras_calls == ["dense"]
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"


def test_a_symbolic_call_is_recorded_in_the_functional_graph(rng):
    dense, _ = _dense(rng)
    inputs = keras.Input((4,))
    outputs = call_sublayer(dense, inputs)
    assert outputs.shape == (None, 3)
    assert keras.Model(inputs, outputs).layers[1] is dense


def test_an_unbuilt_layer_is_built_by_keras(keras_calls, rng):
    x = keras.ops.convert_to_tensor(rng.normal(size=(2, 4)), "float32")
    outputs = call_sublayer(keras.layers.Dense(3, name="dense"), x)
    assert keras_calls == ["dense"]
    assert tuple(outputs.shape) == (2, 3)


def test_a_quantized_layer_runs_keras_quantized_call(keras_calls, rng):
    dense, x = _dense(rng)
    dense.quantize("int8")
    call_sublayer(dense, keras.ops.convert_to_tensor(x, "float32"))
    assert keras_calls == ["dense"]



def test_a_masked_input_keeps_its_mask_through_keras(keras_calls, rng):
    from keras.src.backend import get_keras_mask, set_keras_mask

    dense, x = _dense(rng)
    x = keras.ops.convert_to_tensor(x, "float32")
    set_keras_mask(x, keras.ops.convert_to_tensor([True, False]))
    outputs = call_sublayer(dense, x)
    assert keras_calls == ["dense"]
    assert keras.ops.convert_to_numpy(get_keras_mask(outputs)).tolist() == [True, False]


def test_an_activity_regularizer_adds_its_loss(keras_calls, rng):
    dense = keras.layers.Dense(3, activity_regularizer="l2", name="dense")
    dense.build((2, 4))
    call_sublayer(dense, keras.ops.convert_to_tensor(rng.normal(size=(2, 4)), "float32"))
    assert keras_calls == ["dense"]
    assert len(dense.losses) == 1


def test_a_layer_built_under_a_remat_scope_is_rematerialised_by_keras(keras_calls, rng):
    with keras.RematScope(mode="full"):
        dense = keras.layers.Dense(3, name="dense")
    dense.build((2, 4))
    call_sublayer(dense, keras.ops.convert_to_tensor(rng.normal(size=(2, 4)), "float32"))
    assert keras_calls == ["dense"]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="Keras' distribution API runs on jax")
def test_a_layer_under_a_distribution_is_called_by_keras(keras_calls, rng):
    dense, x = _dense(rng)
    with keras.distribution.DataParallel().scope():
        call_sublayer(dense, keras.ops.convert_to_tensor(x, "float32"))
    assert keras_calls == ["dense"]

torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="module hooks are torch's")


@torch_only
def test_a_torch_forward_hook_still_fires(rng):
    dense, x = _dense(rng)
    seen = []
    dense.register_forward_hook(lambda module, args, outputs: seen.append(tuple(outputs.shape)))
    call_sublayer(dense, keras.ops.convert_to_tensor(x, "float32"))
    assert seen == [(2, 3)]


@torch_only
def test_a_torch_backward_hook_on_a_projection_still_fires(rng):
    import torch

    block, x = _block(rng)
    seen = []
    block.attention.query.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(module.name))
    torch.sum(block(x)).backward()
    assert seen == ["query"]


@torch_only
def test_a_global_torch_forward_hook_sees_every_sublayer(rng):
    import torch

    block, x = _block(rng)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, outputs: seen.append(module.name))
    try:
        block(x)
    finally:
        handle.remove()
    expected = ["norm_before", "query", "key", "value", "output_dense", "attention", "norm_after", "fc1", "fc2", "block"]
    assert seen == expected
