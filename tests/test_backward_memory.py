"""A training step keeps for the backward pass about what torch's autograd keeps.

Per block, torch keeps the GELU's input and output (the second matmul needs
the output) and the attention probabilities once. Each test picks a
backbone in which one of those tensors outweighs everything else a block
holds, and bounds what XLA keeps for the whole backward pass.
"""

import math

import keras
import numpy as np
import pytest

from keras_beit import BEiTBackbone
from keras_beit.layers.backward import exact_gelu

BLOCKS, BATCH = 4, 2

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="reads XLA's buffer assignment")


def _backbone(image, patch, **kwargs):
    return BEiTBackbone(
        image_shape=(image, image, 3), patch_size=patch, num_layers=BLOCKS,
        use_relative_position_bias=True, out_indices=(0, 1, 2, 3), **kwargs,
    )


def _training_step_temp_bytes(backbone):
    """XLA's temporary buffers for the gradient of a training-mode forward."""
    import jax

    size = backbone.image_shape[0]
    images = np.random.default_rng(0).normal(size=(BATCH, size, size, 3)).astype("float32")
    trainable = [v.value for v in backbone.trainable_variables]
    non_trainable = [v.value for v in backbone.non_trainable_variables]

    def loss(t, n, x):
        outputs, _ = backbone.stateless_call(t, n, x, training=True)
        return sum(keras.ops.sum(o) for o in keras.tree.flatten(outputs))

    step = jax.jit(jax.grad(loss))
    return step.lower(trainable, non_trainable, images).compile().memory_analysis().temp_size_in_bytes


def test_exact_gelu_is_x_times_the_normal_cdf_in_training_and_inference():
    x = np.array([-6.0, -1.5, -0.25, 0.0, 0.5, 2.0, 7.0], "float32")
    expected = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    for training in (False, True):
        got = keras.ops.convert_to_numpy(exact_gelu(x, training=training))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@jax_only
def test_xla_keeps_two_mlp_hidden_tensors_per_block():
    # 65 tokens x 2 images x 2048 hidden floats: 1.07 MB a tensor; a block's
    # weights and every other activation come to under 0.2 MB.
    backbone = _backbone(32, 4, hidden_dim=8, num_heads=2, intermediate_dim=2048)
    hidden_bytes = BATCH * 65 * 2048 * 4
    # jax's default derivative of the erf formula kept four per block (17.7 in all).
    assert _training_step_temp_bytes(backbone) < (2 * BLOCKS + 1.5) * hidden_bytes


@jax_only
def test_xla_keeps_the_attention_probabilities_once_per_block():
    # 257 tokens, 8 heads of width 1: 2.1 MB of probabilities per image and block.
    backbone = _backbone(64, 4, hidden_dim=8, num_heads=8, intermediate_dim=8)
    probs_bytes = BATCH * 8 * 257 * 257 * 4
    # Plus the block being differentiated: its logits and their gradients.
    # jax's default softmax derivative left XLA keeping three per block (13.3 in all).
    assert _training_step_temp_bytes(backbone) < (BLOCKS + 2.5) * probs_bytes
