"""Per-block relative position biases exist one at a time, not all at once.

A full bias is (heads, N + 1, N + 1): 123 MB per block for BEiT-B at 640.
The backbone hands each block its resized table and one shared index, and
the block expands them only once its own input exists.
"""

import keras
import numpy as np
import pytest

from keras_beit import BEiTBackbone
from keras_beit.layers.ordering import computed_after

# A grid large enough that one block's bias (2 x 257 x 257 floats, 528 KB)
# outweighs everything else a block keeps.
HEADS, GRID, BLOCKS = 2, 16, 6
TOKENS = GRID * GRID + 1
BIAS_BYTES = HEADS * TOKENS * TOKENS * 4


def _backbone(**kwargs):
    config = dict(
        image_shape=(4 * GRID, 4 * GRID, 3), patch_size=4, num_layers=BLOCKS, hidden_dim=8,
        num_heads=HEADS, intermediate_dim=16, use_relative_position_bias=True, out_indices=(1, 2, 3, 5),
    )
    return BEiTBackbone(**{**config, **kwargs})


def test_the_graph_passes_no_full_bias_between_layers():
    # Keras' functional model on torch keeps every layer's output to the end of the call.
    backbone = _backbone()
    full = (1, HEADS, TOKENS, TOKENS)
    outputs = [t.shape for nodes in backbone._nodes_by_depth.values() for n in nodes for t in n.outputs]
    assert full not in [tuple(s) for s in outputs]
    assert (TOKENS, TOKENS) in [tuple(s) for s in outputs]  # the one shared index


def test_a_shared_table_alone_is_expanded_once_for_every_block():
    backbone = _backbone(use_relative_position_bias=False, use_shared_relative_position_bias=True)
    outputs = [tuple(t.shape) for nodes in backbone._nodes_by_depth.values() for n in nodes for t in n.outputs]
    assert outputs.count((1, HEADS, TOKENS, TOKENS)) == 1


@pytest.mark.parametrize("first", [-2.5, 0.0, np.inf, -np.inf, np.nan])
def test_computed_after_returns_the_value_unchanged_whatever_the_dependency_holds(first):
    value = np.array([1.5, -0.0, 0.0, np.nan, -np.inf], "float32")
    dependency = np.array([[first, 1.0]], "float32")
    result = keras.ops.convert_to_numpy(computed_after({"v": value}, dependency)["v"])
    np.testing.assert_array_equal(result, value)
    np.testing.assert_array_equal(np.signbit(result), np.signbit(value))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="reads XLA's buffer assignment")
def test_xla_holds_about_one_bias_at_a_time():
    import jax

    backbone = _backbone()
    images = np.zeros((1, 4 * GRID, 4 * GRID, 3), "float32")
    trainable = [v.value for v in backbone.trainable_variables]
    non_trainable = [v.value for v in backbone.non_trainable_variables]
    forward = jax.jit(lambda t, n, x: backbone.stateless_call(t, n, x)[0])
    temp = forward.lower(trainable, non_trainable, images).compile().memory_analysis().temp_size_in_bytes
    # All six at once would be 3.2 MB; a block needs its bias, its logits and their softmax.
    assert temp < 4 * BIAS_BYTES


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="reads a tf.function graph")
def test_tensorflow_graph_holds_one_index_constant_for_all_blocks():
    import tensorflow as tf

    backbone = _backbone()
    graph = tf.function(backbone).get_concrete_function(tf.TensorSpec((1, 4 * GRID, 4 * GRID, 3))).graph
    index_sized = [
        op for op in graph.get_operations()
        if op.type == "Const" and op.outputs[0].shape.num_elements() == TOKENS * TOKENS
    ]
    assert len(index_sized) == 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="reads a tf.function graph")
def test_tensorflow_expands_each_block_bias_only_after_the_blocks_before_it():
    import tensorflow as tf

    backbone = _backbone()
    graph = tf.function(backbone).get_concrete_function(tf.TensorSpec((1, 4 * GRID, 4 * GRID, 3))).graph

    def matmuls_upstream(op, seen):
        for tensor in list(op.inputs) + [c.outputs[0] for c in op.control_inputs if c.outputs]:
            if tensor.op not in seen:
                seen.add(tensor.op)
                matmuls_upstream(tensor.op, seen)
        return sum(o.type in ("MatMul", "_FusedMatMul", "BatchMatMulV2") for o in seen)

    expansions = [
        op for op in graph.get_operations()
        if op.type == "GatherV2" and op.outputs[0].shape.num_elements() == HEADS * TOKENS * TOKENS
    ]
    # The executor starts an op once its inputs exist: a gather fed by weights
    # alone would run first. Each must wait for a different number of matmuls.
    counts = sorted(matmuls_upstream(op, set()) for op in expansions)
    assert len(expansions) == BLOCKS and len(set(counts)) == BLOCKS and counts[0] == 0
