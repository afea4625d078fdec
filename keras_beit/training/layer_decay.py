"""Layer-wise learning-rate decay and the original BEiT fine-tuning recipe.

The original (unilm beit/optim_factory.py) gives every parameter a layer id:
0 for the patch embedding, CLS and mask tokens and absolute positions,
i + 1 for block i (its per-layer relative position table included), and
L + 1 for everything above the blocks (final norms, pooler, heads, the FPN
and decode heads) and for the shared relative position table. Its learning
rate is scaled by decay ** (L + 1 - id).
"""

import re

import keras
from keras import ops

_BLOCK = re.compile(r"(?:^|/)(?:block|relative_position_bias)_(\d+)/")
_EMBEDDING = re.compile(r"(?:^|/)patch_embedding/")


def layer_id(variable_path, num_layers):
    """The original's layer id for a variable, from its Keras path."""
    block = _BLOCK.search(variable_path)
    if block:
        return int(block.group(1)) + 1
    if _EMBEDDING.search(variable_path):
        return 0
    return num_layers + 1


def _backbone_of(model):
    return getattr(model, "backbone", model)


def layer_decay_scales(model, decay):
    """{variable path: learning-rate scale} for every trainable variable of `model`."""
    num_layers = _backbone_of(model).num_layers
    return {
        v.path: decay ** (num_layers + 1 - layer_id(v.path, num_layers))
        for v in model.trainable_variables
    }


def no_weight_decay_variables(model, include_relative_position_tables=False):
    """Variables the original excludes from weight decay.

    Every 1-D variable (biases, LayerNorm scales and offsets, layer scales),
    the CLS and mask tokens and absolute position embeddings; optionally the
    relative position tables (the original's
    --disable_weight_decay_on_rel_pos_bias).
    """
    excluded = []
    for v in model.trainable_variables:
        name = v.path.split("/")[-1]
        if len(v.shape) == 1 or name in ("cls_token", "mask_token", "position_embeddings"):
            excluded.append(v)
        elif include_relative_position_tables and name == "relative_position_bias_table":
            excluded.append(v)
    return excluded


class _LayerDecayMixin:
    """Scales each variable's update by its layer's learning-rate scale.

    For optimizers whose step is the learning rate times a direction (SGD
    without momentum, Adam, AdamW and their decoupled weight decay, Lion,
    Adafactor...), scaling the step equals scaling that variable's learning
    rate, which is what the original's parameter groups do. The scales and
    the weight-decay exclusions are kept by variable path in the optimizer's
    config, so a model saved with it resumes training with them.
    """

    def __init__(self, *args, layer_scales=None, no_weight_decay_paths=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_scales = dict(layer_scales or {})
        self.no_weight_decay_paths = tuple(no_weight_decay_paths)

    def build(self, variables):
        if self.no_weight_decay_paths:
            excluded = set(self.no_weight_decay_paths)
            self.exclude_from_weight_decay(var_list=[v for v in variables if v.path in excluded])
        super().build(variables)

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        scaled = [(v, self.layer_scales.get(v.path, 1.0)) for v in variables]
        scaled = [(v, s) for v, s in scaled if s != 1.0]
        before = [ops.copy(v.value) for v, _ in scaled]
        result = super().apply(grads, trainable_variables)
        for (variable, scale), old in zip(scaled, before):
            variable.assign(old + ops.cast(scale, old.dtype) * (variable.value - old))
        return result

    def get_config(self):
        return {
            **super().get_config(),
            "layer_scales": self.layer_scales,
            "no_weight_decay_paths": list(self.no_weight_decay_paths),
        }


_LAYER_DECAY_CLASSES = {}


def _layer_decay_class(cls):
    """`LayerDecay<cls>`, registered so that saved models compiled with it load."""
    if cls not in _LAYER_DECAY_CLASSES:
        decayed = type(f"LayerDecay{cls.__name__}", (_LayerDecayMixin, cls), {"__module__": __name__})
        _LAYER_DECAY_CLASSES[cls] = keras.saving.register_keras_serializable(package="keras_beit")(decayed)
    return _LAYER_DECAY_CLASSES[cls]


# Keras' own optimizers get theirs on import: a fresh process that loads a saved
# model must find the class before with_layer_decay is ever called.
for _cls in vars(keras.optimizers).values():
    if (
        isinstance(_cls, type)
        and issubclass(_cls, keras.optimizers.Optimizer)
        and _cls not in (keras.optimizers.Optimizer, keras.optimizers.LossScaleOptimizer)
        and _cls.__name__ != "MultiOptimizer"
    ):
        _layer_decay_class(_cls)


def with_layer_decay(optimizer, model, decay, exclude_from_weight_decay=True):
    """A copy of `optimizer` that applies layer-wise learning-rate decay for `model`.

    Works with any Keras optimizer on every backend, in `compile()` then
    `fit()`. With `exclude_from_weight_decay`, the original's no-decay
    variables are excluded from the optimizer's weight decay. A model saved
    with it reloads with it (for an optimizer class outside Keras, once
    with_layer_decay has been called on that class in the loading process).
    """
    if getattr(optimizer, "use_ema", False):
        # Keras updates (and may overwrite weights with) the moving average
        # inside apply(), before the layer scales apply: it would track the
        # undecayed steps, and finalize_variable_values would install them.
        raise ValueError(
            "with_layer_decay does not support use_ema=True: Keras' moving average would follow the steps before "
            "the layer-wise scaling. Average the weights outside the optimizer instead (for example in a callback)."
        )
    excluded = ()
    if exclude_from_weight_decay and getattr(optimizer, "weight_decay", None):
        excluded = [v.path for v in no_weight_decay_variables(model)]
    return _layer_decay_class(type(optimizer)).from_config(
        {**optimizer.get_config(), "layer_scales": layer_decay_scales(model, decay), "no_weight_decay_paths": excluded}
    )


def beit_fine_tuning_optimizer(
    model,
    steps,
    learning_rate=5e-4,
    layer_decay=0.65,
    weight_decay=0.05,
    warmup_steps=None,
    warmup_learning_rate=1e-6,
    min_learning_rate=1e-6,
    beta_1=0.9,
    beta_2=0.999,
):
    """The original BEiT fine-tuning optimizer in one call.

    AdamW with a linear warmup from `warmup_learning_rate` to `learning_rate`
    then cosine decay to `min_learning_rate` over `steps`, layer-wise decay
    and the original's weight-decay exclusions. The defaults are the
    original's ImageNet-1k recipe for BEiT-B from pre-training (layer decay
    0.65, lr 5e-4 scaled by batch size there, weight decay 0.05).
    """
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=warmup_learning_rate,
        decay_steps=max(1, steps - warmup_steps),
        alpha=min_learning_rate / learning_rate,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2
    )
    return with_layer_decay(optimizer, model, layer_decay)
