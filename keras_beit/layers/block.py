"""The BEiT transformer block: pre-norm attention and MLP with layer scale."""

import keras
from keras import ops

from keras_beit.layers.attention import BEiTAttention
from keras_beit.layers.attention import token_rows
from keras_beit.layers.backward import LayerNormalization, exact_gelu
from keras_beit.layers.heap import release_free_heap
from keras_beit.layers.ordering import computed_after
from keras_beit.layers.projection import Projection
from keras_beit.layers.relative_position_bias import expand_table
from keras_beit.layers.sublayer import call_sublayer


@keras.saving.register_keras_serializable(package="keras_beit")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample in training.

    Kept samples are scaled by 1 / (1 - rate) so the expectation is unchanged.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None
        # No weights to create. A layer left unbuilt (a block after the last
        # tapped one never runs) makes jax's predict_on_batch re-run the
        # whole model eagerly on every call.
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        return inputs / keep * ops.floor(keep + noise)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


def _full_bias(parts, inputs):
    """The attention bias from a block's bias parts: none, a tensor, or (table, index).

    A table is expanded here, once the block's input exists, and inside any
    recomputation, so that only the table and index are kept for backward.
    """
    if len(parts) < 2:
        return parts[0] if parts else None
    rows, index = parts
    return ops.expand_dims(expand_table(computed_after(rows, inputs), index), 0)


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTBlock(keras.layers.Layer):
    """x + lambda_1 * Attn(LN(x)), then x + lambda_2 * MLP(LN(x)).

    The per-channel layer scales lambda_1 and lambda_2 exist only when
    `layer_scale_init_value > 0`. The MLP uses the exact (erf) GELU.
    Called with `bias`, a tensor broadcasting to `(batch, heads, tokens,
    tokens)`, or a pair `(table, index)`: the table from
    `BEiTRelativePositionBias(..., expand=False)` and the images'
    `RelativePositionIndex`, expanded to the bias only inside the block.

    Args:
        hidden_dim: model width D.
        num_heads: attention heads.
        intermediate_dim: MLP hidden width.
        layer_scale_init_value: initial layer scale; 0 disables layer scale.
        drop_path_rate: stochastic depth rate of this block.
        dropout_rate: dropout after the attention output and after the MLP.
        attention_dropout_rate: dropout on the attention probabilities.
        layer_norm_epsilon: epsilon of both LayerNorms.
        gradient_checkpointing: in training, recompute the attention and MLP
            activations in the backward pass instead of storing them (the
            attention's only while `attention_dropout_rate` is 0). Dropout and
            drop path are drawn once, outside the recomputed parts.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        layer_norm_epsilon=1e-12,
        gradient_checkpointing=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.gradient_checkpointing = gradient_checkpointing
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = dict(dtype=self.dtype_policy)
        self.norm_before = LayerNormalization(
            epsilon=layer_norm_epsilon, name="norm_before", **policy
        )
        self.attention = BEiTAttention(
            hidden_dim, num_heads, attention_dropout_rate, name="attention", **policy
        )
        self.norm_after = LayerNormalization(
            epsilon=layer_norm_epsilon, name="norm_after", **policy
        )
        self.fc1 = Projection(intermediate_dim, name="fc1", **policy)
        self.fc2 = Projection(hidden_dim, name="fc2", **policy)
        self.dropout = keras.layers.Dropout(dropout_rate, **policy)
        self.drop_path = DropPath(drop_path_rate, **policy)

    def build(self, inputs_shape, bias_shape=None):
        self.norm_before.build(inputs_shape)
        self.attention.build(inputs_shape)
        self.norm_after.build(inputs_shape)
        self.fc1.build(inputs_shape)
        self.fc2.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        if self.layer_scale_init_value > 0:
            init = keras.initializers.Constant(self.layer_scale_init_value)
            self.lambda_1 = self.add_weight(name="lambda_1", shape=(self.hidden_dim,), initializer=init)
            self.lambda_2 = self.add_weight(name="lambda_2", shape=(self.hidden_dim,), initializer=init)
        self.built = True
        release_free_heap()

    def load_own_variables(self, store):
        # Keras loads a block's own weights before its sublayers', so this
        # releases what loading the block before left behind.
        release_free_heap()
        super().load_own_variables(store)

    def _scale(self, x, scale_name):
        if self.layer_scale_init_value > 0:
            return x * getattr(self, scale_name)
        return x

    @staticmethod
    def _regularise(layer, x, training):
        # Skipped rather than called when inactive: on eager torch a layer
        # call costs about 85 us of Python even when it returns its input.
        return layer(x, training=training) if training and layer.rate > 0 else x

    def call(self, inputs, bias=None, training=None, return_attention_scores=False):
        # remat passes tensors only, so the bias (none, a tensor, or a table
        # and its index) travels as a flat list of them.
        bias_parts = [] if bias is None else list(bias) if isinstance(bias, (tuple, list)) else [bias]

        def attend(x, *parts):
            return call_sublayer(
                self.attention,
                call_sublayer(self.norm_before, x, training=training),
                bias=_full_bias(parts, x),
                training=training,
                return_attention_scores=return_attention_scores,
            )

        # Inside a recomputed MLP the GELU keeps nothing anyway.
        lean_gelu = training and not self.gradient_checkpointing

        def mlp(x):
            rows = token_rows(call_sublayer(self.norm_after, x, training=training), self.hidden_dim)
            hidden = exact_gelu(call_sublayer(self.fc1, rows), training=lean_gelu)
            return ops.reshape(call_sublayer(self.fc2, hidden), ops.shape(x))

        # Recomputation re-runs what it wraps, so nothing random may sit inside:
        # a second draw gives the backward pass other masks than the forward
        # (wrong gradients on tensorflow and torch, a leaked tracer on jax).
        # Dropout and drop path therefore stay outside, and the attention is
        # recomputed only while its own dropout is off.
        if self.gradient_checkpointing and training:
            mlp = keras.remat(mlp)
            if self.attention.dropout_rate == 0:
                attend = keras.remat(attend)
        attended = attend(inputs, *bias_parts)
        if return_attention_scores:
            attended, scores = attended
        attended = self._scale(self._regularise(self.dropout, attended, training), "lambda_1")
        x = inputs + self._regularise(self.drop_path, attended, training)
        hidden = self._scale(self._regularise(self.dropout, mlp(x), training), "lambda_2")
        x = x + self._regularise(self.drop_path, hidden, training)
        if return_attention_scores:
            return x, scores
        return x

    def compute_output_spec(self, inputs, bias=None, training=None, return_attention_scores=False):
        # The residual stream keeps the attention output's shape.
        return self.attention.compute_output_spec(
            inputs, bias=bias, return_attention_scores=return_attention_scores
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_scale_init_value": self.layer_scale_init_value,
                "drop_path_rate": self.drop_path_rate,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
        )
        return config
