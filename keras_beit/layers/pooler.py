"""Pooling of the token sequence into one vector per image."""

import keras
from keras import ops

from keras_beit.layers.backward import LayerNormalization


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTPooler(keras.layers.Layer):
    """Mean of the patch tokens (CLS excluded) then LayerNorm, or the CLS token.

    With `use_mean_pooling` this is transformers' `pooler.layernorm` and the
    original's `fc_norm`; without it the CLS token passes through unchanged
    (the backbone has already normalized the sequence).
    """

    def __init__(self, use_mean_pooling=True, layer_norm_epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.use_mean_pooling = use_mean_pooling
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm = None
        if use_mean_pooling:
            self.norm = LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
            )

    def build(self, sequence_shape):
        if self.norm is not None:
            self.norm.build((sequence_shape[0], sequence_shape[-1]))
        self.built = True

    def call(self, sequence):
        if self.norm is None:
            return sequence[:, 0]
        return self.norm(ops.mean(sequence[:, 1:], axis=1))

    def compute_output_shape(self, sequence_shape):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_mean_pooling": self.use_mean_pooling,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
