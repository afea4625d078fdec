"""A training step keeps for the backward pass about what torch's autograd keeps.

Per block, torch keeps the GELU's input and output (the second matmul needs
the output) and the attention probabilities once. Each test picks a
backbone in which one of those tensors outweighs everything else a block
holds, and bounds what XLA keeps for the whole backward pass. torch keeps
no earlier step's gradients while the forward pass runs and updates a few
weights at a time, and TensorFlow traces a training step once.
"""

import math

import keras
import numpy as np
import pytest

from keras_beit import BEiTBackbone
from keras_beit import BEiTImageClassifier
from keras_beit import BEiTMaskedImageModeler
from keras_beit.layers.backward import LayerNormalization, exact_gelu

BLOCKS, BATCH = 4, 2

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="reads a traced TensorFlow step")
torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch keeps gradients on the weights")
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


def _layer_norm_and_gradients(x, gamma, beta, weights, epsilon):
    """float64 LayerNorm of x, and central differences of sum(weights * LN) for x, gamma and beta."""

    def loss(x, gamma, beta):
        normalised = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon)
        return np.sum(weights * (normalised * gamma + beta)), normalised * gamma + beta

    gradients = []
    for index, value in enumerate((x, gamma, beta)):
        gradient = np.zeros_like(value)
        for position in np.ndindex(value.shape):
            shifted = [np.array(v, copy=True) for v in (x, gamma, beta)]
            shifted[index][position] += 1e-6
            up = loss(*shifted)[0]
            shifted[index][position] -= 2e-6
            gradient[position] = (up - loss(*shifted)[0]) / 2e-6
        gradients.append(gradient)
    return loss(x, gamma, beta)[1], gradients


def test_layer_norm_in_training_has_the_value_and_gradients_of_a_layer_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6)) * 3 + 1
    gamma, beta, weights = rng.normal(size=6), rng.normal(size=6), rng.normal(size=(2, 3, 6))
    expected, expected_gradients = _layer_norm_and_gradients(x, gamma, beta, weights, 1e-3)
    layer = LayerNormalization(epsilon=1e-3)
    layer.build(x.shape)
    layer.set_weights([gamma.astype("float32"), beta.astype("float32")])
    x32, weights32 = x.astype("float32"), weights.astype("float32")
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(x, gamma, beta):
            outputs, _ = layer.stateless_call([gamma, beta], [], x, training=True)
            return keras.ops.sum(weights32 * outputs), outputs

        (_, outputs), gradients = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            x32, *(v.value for v in layer.weights)
        )
    elif backend == "tensorflow":
        import tensorflow as tf

        x32 = tf.constant(x32)
        with tf.GradientTape() as tape:
            tape.watch(x32)
            outputs = layer(x32, training=True)
            total = tf.reduce_sum(weights32 * outputs)
        gradients = tape.gradient(total, [x32, layer.gamma.value, layer.beta.value])
    else:
        import torch

        x32 = torch.tensor(x32, requires_grad=True)
        outputs = layer(x32, training=True)
        torch.sum(torch.tensor(weights32) * outputs).backward()
        gradients = [x32.grad, layer.gamma.value.grad, layer.beta.value.grad]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), expected, atol=1e-5)
    for got, want in zip(gradients, expected_gradients):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, atol=1e-4)


@jax_only
def test_xla_keeps_each_layer_norms_input_alone():
    # 257 tokens x 2 images x 512 features: 1.05 MB a tensor, and almost
    # everything a block holds is that size (8 hidden MLP features, 1 head).
    backbone = _backbone(32, 2, hidden_dim=512, num_heads=1, intermediate_dim=8)
    features_bytes = BATCH * 257 * 512 * 4
    # torch saves 11 per block. Keras' LayerNorm formula kept one more per LayerNorm (14.3 a block in all).
    assert _training_step_temp_bytes(backbone) < 13 * BLOCKS * features_bytes


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


def _tiny_task(task, optimizer):
    """A compiled tiny classifier or masked image modeler, with a batch for it."""
    backbone = _backbone(32, 4, hidden_dim=8, num_heads=2, intermediate_dim=16, use_mask_token=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 32, 32, 3)).astype("float32")
    if task == "classifier":
        model = BEiTImageClassifier(backbone, num_classes=3)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        return model, images, np.array([0, 2])
    model = BEiTMaskedImageModeler(backbone, vocabulary_size=5)
    model.compile(optimizer=optimizer)
    mask = np.zeros((BATCH, 64), "bool")
    mask[:, ::3] = True
    return model, {"images": images, "mask": mask}, rng.integers(0, 5, size=(BATCH, 64))


@torch_only
@pytest.mark.parametrize("task", ["classifier", "masked_image_modeler"])
def test_a_torch_training_step_frees_the_last_steps_gradients_before_its_forward(task):
    model, images, y = _tiny_task(task, "sgd")
    backbone = model.backbone
    # The first layer of every forward pass.
    embedding = backbone.get_layer("patch_embedding")
    held, call = [], embedding.call

    def call_counting_gradients(*args, **kwargs):
        held.append(sum(w.value.grad is not None for w in model.trainable_weights))
        return call(*args, **kwargs)

    embedding.call = call_counting_gradients
    model.train_on_batch(images, y)
    assert any(w.value.grad is not None for w in model.trainable_weights)
    held.clear()
    model.train_on_batch(images, y)
    # Keras' own step holds every weight's gradient through the forward pass.
    assert held and set(held) == {0}


def _square_roots_taken(monkeypatch):
    """The bytes of every list `torch._foreach_sqrt` is given, call by call."""
    import torch

    calls, sqrt = [], torch._foreach_sqrt

    def sqrt_noting_its_input(tensors):
        calls.append(sum(t.nbytes for t in tensors))
        return sqrt(tensors)

    monkeypatch.setattr(torch, "_foreach_sqrt", sqrt_noting_its_input)
    return calls


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.5),
    "loss_scaled_adamw": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.AdamW(1e-2)),
}


@torch_only
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_torch_adam_step_takes_square_roots_of_a_few_weights_at_a_time(optimizer, monkeypatch):
    from keras_beit.models import train_step

    monkeypatch.setattr(train_step, "ADAM_GROUP_BYTES", 1024)
    model, images, y = _tiny_task("classifier", OPTIMIZERS[optimizer]())
    calls = _square_roots_taken(monkeypatch)
    model.train_on_batch(images, y)
    learned = [w.value for w in model.trainable_weights if w.value.grad is not None]  # not the mask token
    largest = max(w.nbytes for w in learned)
    # Keras' own update takes one square root of every second moment at once.
    assert sum(calls) == sum(w.nbytes for w in learned)
    assert len(calls) > 1 and max(calls) <= max(1024, largest)


@torch_only
def test_a_torch_nadam_step_keeps_keras_update_whole(monkeypatch):
    model, images, y = _tiny_task("classifier", keras.optimizers.Nadam(1e-2))
    calls = _square_roots_taken(monkeypatch)
    model.train_on_batch(images, y)
    # Nadam advances a product of its momentum schedule once per update call.
    assert calls == [sum(w.value.nbytes for w in model.trainable_weights if w.value.grad is not None)]


@torch_only
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_torch_adam_step_in_groups_moves_every_weight_as_keras_own_step(optimizer, monkeypatch):
    import types

    from keras_beit.models import train_step

    monkeypatch.setattr(train_step, "ADAM_GROUP_BYTES", 1024)
    trained = []
    for step in ("grouped", "keras"):
        keras.utils.set_random_seed(0)
        model, images, y = _tiny_task("classifier", OPTIMIZERS[optimizer]())
        if step == "keras":
            model.train_step = types.MethodType(keras.Model.train_step, model)
        for _ in range(3):
            model.train_on_batch(images, y)
        trained.append([keras.ops.convert_to_numpy(w.value) for w in model.trainable_weights])
    for grouped, own in zip(*trained):
        np.testing.assert_array_equal(grouped, own)


@tensorflow_only
def test_a_tensorflow_step_changes_each_weight_only_after_its_gradient_exists():
    import tensorflow as tf

    model = BEiTImageClassifier(_backbone(32, 4, hidden_dim=8, num_heads=2, intermediate_dim=16), num_classes=3)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    images, labels = np.zeros((BATCH, 32, 32, 3), "float32"), np.zeros(BATCH, "int32")
    model.train_on_batch(images, labels)
    graph = tf.function(model.train_step).get_concrete_function((tf.constant(images), tf.constant(labels))).graph
    handles = {id(outer): inner for outer, inner in graph.captures}

    def waits_for_a_gradient(op):
        seen, stack = set(), [op]
        while stack:
            current = stack.pop()
            if current.name.startswith("gradient_tape"):
                return True
            for parent in [t.op for t in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
        return False

    writes = [
        op
        for variable in model.trainable_variables
        for op in handles[id(variable.value.handle)].consumers()
        if op.type.startswith(("Assign", "ResourceApply"))
    ]
    # AdamW writes each weight twice: its decay, then its update. Keras' own
    # step let every decay run at the start, before the forward pass.
    assert len(writes) == 2 * len(model.trainable_variables)
    assert [op.name for op in writes if not waits_for_a_gradient(op)] == []


@tensorflow_only
@pytest.mark.parametrize("task", ["classifier", "masked_image_modeler"])
def test_a_tensorflow_training_step_is_traced_once(task):
    model, images, y = _tiny_task(task, keras.optimizers.AdamW(1e-3))
    traces, step = [], model.train_step

    def step_counting_traces(data):
        traces.append(data)
        return step(data)

    model.train_step = step_counting_traces
    for _ in range(3):
        model.train_on_batch(images, y)
    # Keras left the optimizer to build in the first trace; a step that makes
    # variables is traced again without them, and TensorFlow kept both.
    assert len(traces) == 1
