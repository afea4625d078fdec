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
      Its Adam update is also made in groups: see `_adam_update_in_groups`.
    - tensorflow: see `_weight_decay_after_each_gradient`.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        self.zero_grad(set_to_none=True)
        ordered = _adam_update_in_groups(self.optimizer)
    elif backend == "tensorflow":
        ordered = _weight_decay_after_each_gradient(self.optimizer)
    else:
        ordered = contextlib.nullcontext()
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


# Three temporaries of this size exist at once in a group's update.
ADAM_GROUP_BYTES = 16 * 2**20


@contextlib.contextmanager
def _adam_update_in_groups(optimizer):
    """Makes Keras' torch Adam and AdamW update a few weights at a time.

    Keras updates every weight in one run of `torch._foreach_*` calls, and
    the ones that return new tensors (`g * g`, `m * alpha`, `sqrt(v) + eps`,
    their quotient) each make a whole model's worth: for BEiT-B about three
    copies of its 346 MB of weights at the step's end, where torch.optim's
    AdamW on CPU goes one weight at a time. Each group here gets the same
    per-weight arithmetic, from the same step count (Keras increments it
    after the update), so the update is unchanged. Only optimizers that use
    Keras' own Adam update are grouped: Nadam's, for one, keeps a running
    product that must advance once per step.
    """
    updating = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    try:
        from keras.src.backend.torch.optimizers.torch_adam import Adam
    except ImportError:  # a Keras laid out otherwise keeps its own update
        yield
        return
    if getattr(type(updating), "_parallel_update_step", None) is not Adam._parallel_update_step:
        yield
        return

    update = updating._parallel_update_step

    def update_in_groups(grads, variables, learning_rate):
        # The step's learning rate is cast to the first weight's dtype.
        if len({variable.dtype for variable in variables}) > 1:
            return update(grads, variables, learning_rate)
        start, size = 0, 0
        for end, grad in enumerate(grads):
            if size and size + grad.nbytes > ADAM_GROUP_BYTES:
                update(grads[start:end], variables[start:end], learning_rate)
                start, size = end, 0
            size += grad.nbytes
        update(grads[start:], variables[start:], learning_rate)

    updating._parallel_update_step = update_in_groups
    try:
        yield
    finally:
        del updating._parallel_update_step
