"""What training keeps for the backward pass: the least each backend allows.

A training step holds, for every block until the backward pass reaches it,
what the gradients need. Left to their defaults, jax and TensorFlow keep
more of it than torch does. For BEiT-B at batch 8, per block: the MLP's
hidden tensors are 18.5 MB each and the attention probabilities 14.2 MB.
"""

import contextlib

import keras
from keras import ops


def _gelu(x):
    return keras.activations.gelu(x, approximate=False)


_gelu_from_its_input = keras.remat(_gelu)


def exact_gelu(x, training=None):
    """x * Phi(x), keeping only x for the backward pass in training.

    jax and TensorFlow differentiate the erf formula term by term and keep
    its intermediates: on jax, four hidden-sized tensors in every block where
    torch keeps two (x, and the output the next matmul needs). Recomputed
    from x in the backward pass, the GELU costs a few elementwise passes (no
    matmul): 444 MB less for BEiT-B at batch 8 on jax, about 400 MB on
    tensorflow, no slower.
    """
    return _gelu_from_its_input(x) if training else _gelu(x)


def softmax_keeping_its_output():
    """A context in which softmax's gradient needs only its output.

    jax by default differentiates softmax through its exp and division, and
    XLA then keeps the exponentials, the broadcast row sums and the
    probabilities: three (batch, heads, N, N) tensors per block where torch
    and TensorFlow keep one. jax's own softmax rule, off by default, keeps
    the output alone (342 MB less for BEiT-B at batch 8); the forward
    arithmetic is the same. Keras exposes neither, so the layers ask for the
    backend here, in this module alone.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.softmax_custom_jvp(True)
    return contextlib.nullcontext()


def _layer_norm_keeping_its_input(x, gamma, beta, epsilon):
    """LayerNorm over the last axis whose gradient needs x and two numbers per row.

    The forward pass is Keras' formula, in float32; the backward pass
    recomputes the normalised input from x instead of keeping it.
    """

    @ops.custom_gradient
    def normalise(x, gamma, beta):
        x32 = ops.cast(x, "float32")
        mean = ops.mean(x32, axis=-1, keepdims=True)
        inverse_deviation = ops.rsqrt(ops.var(x32, axis=-1, keepdims=True) + epsilon)
        scale = inverse_deviation * gamma
        outputs = x32 * scale + (beta - mean * scale)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            normalised = (ops.cast(x, "float32") - mean) * inverse_deviation
            scaled = upstream * gamma
            dx = inverse_deviation * (
                scaled
                - ops.mean(scaled, axis=-1, keepdims=True)
                - normalised * ops.mean(scaled * normalised, axis=-1, keepdims=True)
            )
            rows = tuple(range(len(x.shape) - 1))
            return ops.cast(dx, x.dtype), ops.sum(upstream * normalised, axis=rows), ops.sum(upstream, axis=rows)

        return outputs, grad

    return normalise(x, gamma, beta)


@keras.saving.register_keras_serializable(package="keras_beit")
class LayerNormalization(keras.layers.LayerNormalization):
    """Keras' LayerNormalization, keeping only its input for the backward pass in training.

    Differentiated op by op, Keras' formula (`x * (rsqrt(var) * gamma) +
    ...`) leaves XLA keeping one more activation-sized tensor per LayerNorm
    than torch's kernel, which keeps x and two numbers per row: 116 MB for
    BEiT-B's 24 at batch 8. Inference, and torch, where Keras already calls
    that kernel, run Keras' own.
    """

    def call(self, inputs, training=None):
        rank = len(inputs.shape)
        if not training or keras.backend.backend() == "torch" or [a % rank for a in self.axis] != [rank - 1]:
            return super().call(inputs)
        outputs = _layer_norm_keeping_its_input(
            inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)
