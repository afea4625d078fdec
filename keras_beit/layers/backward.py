"""What training keeps for the backward pass: the least each backend allows.

A training step holds, for every block until the backward pass reaches it,
what the gradients need. Left to their defaults, jax and TensorFlow keep
more of it than torch does. For BEiT-B at batch 8, per block: the MLP's
hidden tensors are 18.5 MB each and the attention probabilities 14.2 MB.
"""

import contextlib

import keras


def _gelu(x):
    return keras.activations.gelu(x, approximate=False)


_gelu_from_its_input = keras.remat(_gelu)


def exact_gelu(x, training=None):
    """x * Phi(x), keeping only x for the backward pass in training.

    jax and TensorFlow differentiate the erf formula term by term and keep
    its intermediates: on jax, four hidden-sized tensors in every block where
    torch keeps two (x, and the output the next matmul needs). Recomputed from x in the backward pass,
    the GELU costs a few elementwise passes (no matmul): 444 MB less for
    BEiT-B at batch 8 on jax, about 400 MB on tensorflow, no slower.
    """
    return _gelu_from_its_input(x) if training else _gelu(x)


def softmax_keeping_its_output():
    """A context in which softmax's gradient needs only its output.

    jax by default differentiates softmax through its exp and division, and
    XLA then keeps the exponentials, the broadcast row sums and the
    probabilities: three (batch, heads, N, N) tensors per block where torch
    and TensorFlow keep one. jax's own softmax rule, off by default, keeps
    the output alone (342 MB less for BEiT-B at batch 8); the forward
    arithmetic is the same. Keras exposes neither, so this is the one place
    that asks for the backend.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.softmax_custom_jvp(True)
    return contextlib.nullcontext()
