"""Keras' train step, holding less memory at its peak on torch and TensorFlow.

Each backend's step computes the same update as Keras' own; what changes is
when the optimizer's inputs and outputs exist. Keras runs these steps in a
per-backend trainer, so the models' training asks for the backend here alone.
"""

import contextlib

import keras


def train_step_holding_less(self, *args):
    """Keras' train step (jax's also takes the state; arguments pass through).

    - torch: Keras runs the model first and clears the last step's gradients
      afterwards, so those gradients (one float per weight: 346 MB for BEiT-B)
      are held through the forward pass, when the activations kept for the
      backward pass are at their largest. transformers' loops and torch's own
      examples clear them first, as here. Nothing reads them in between.
    - tensorflow: see `_weight_decay_after_each_gradient`.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        self.zero_grad(set_to_none=True)
    ordered = _weight_decay_after_each_gradient(self.optimizer) if backend == "tensorflow" else contextlib.nullcontext()
    with ordered:
        return keras.Model.train_step(self, *args)


def make_train_function_with_built_optimizer(self, force=False):
    """Keras' `make_train_function`, with the optimizer's variables made first.

    Keras on TensorFlow without a distribution strategy leaves the optimizer
    to build itself inside the first traced step. A step that creates
    variables is traced twice, once creating them and once without, and both
    graphs stay instantiated: for BEiT-B at batch 8 with AdamW every later
    step peaked about 280 MB higher (3078 MB above the imports against 2801).
    Keras builds it before tracing itself under a strategy, after
    `compile_from_config`, and on jax and torch, on the variables its own
    step passes it.
    """
    built = all(layer.built for layer in self._flatten_layers())
    if self.optimizer is not None and not self.optimizer.built and built:
        self.optimizer.build(self.trainable_variables)
    return keras.Model.make_train_function(self, force=force)


@contextlib.contextmanager
def _weight_decay_after_each_gradient(optimizer):
    """Makes each weight's decay, in a traced step, wait for that weight's gradient.

    TensorFlow's executor runs an op as soon as its inputs exist. Keras'
    weight decay (`w -= w * decay * lr`, before the update) needs nothing but
    the weight, so every weight's decay ran at the start of the step, while
    the forward and backward passes still hold the weights they read. For
    BEiT-B at batch 8 the step's peak was about 310 MB higher with AdamW than
    with Adam; in this order it is the same. The arithmetic is unchanged.
    """
    import tensorflow as tf

    decaying = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    # Under a distribution strategy, replicas trace the step side by side and
    # the decay runs in a cross-replica merge: Keras' order is kept there.
    # A Keras without the private decay hook also keeps its own order.
    if (
        getattr(decaying, "weight_decay", None) is None
        or not hasattr(decaying, "_apply_weight_decay")
        or tf.distribute.has_strategy()
    ):
        yield
        return

    apply_gradients, apply_weight_decay = optimizer.apply_gradients, decaying._apply_weight_decay
    gradients = {}

    def apply_gradients_noting_them(grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        gradients.update({id(variable): grad for grad, variable in grads_and_vars if grad is not None})
        return apply_gradients(grads_and_vars)

    def decay_after_its_gradient(variables):
        if tf.executing_eagerly():  # run_eagerly: ops already run in program order
            return apply_weight_decay(variables)
        for variable in variables:
            grad = gradients.get(id(variable))
            with tf.control_dependencies([] if grad is None else [grad.op]):
                apply_weight_decay([variable])

    optimizer.apply_gradients, decaying._apply_weight_decay = apply_gradients_noting_them, decay_after_its_gradient
    try:
        yield
    finally:
        del optimizer.apply_gradients, decaying._apply_weight_decay
