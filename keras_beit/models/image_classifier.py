"""BEiTImageClassifier: pooled BEiT features and a Dense head."""

import keras
from keras_hub.models import ImageClassifier
from keras_hub.models import Task

from keras_beit.layers.pooler import BEiTPooler
from keras_beit.models.label_checks import validated_labels
from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.preprocessors import BEiTImageClassifierPreprocessor
from keras_beit.models.preset_loading import routed_from_preset
from keras_beit.models.quantization import quantize_backbone
from keras_beit.models.saved_compile import compile_from_saved_config
from keras_beit.models.tracking import finish_tracking
from keras_beit.models.train_step import make_train_function_with_built_optimizer, train_step_holding_less


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageClassifier(ImageClassifier):
    """Image classification with BEiT, as transformers' BeitForImageClassification.

    The pooled vector is the LayerNorm of the mean patch token when the
    backbone uses mean pooling, the CLS token otherwise; a Dense layer maps it
    to `num_classes` logits. `compile()` with no arguments uses keras-hub's
    defaults (Adam 5e-5, sparse categorical cross-entropy, accuracy).

    Args:
        backbone: a `BEiTBackbone`.
        num_classes: number of classes.
        preprocessor: a `BEiTImageClassifierPreprocessor` or None.
        activation: activation of the head, e.g. "softmax"; None for logits.
        dropout: dropout before the head.
        head_dtype: dtype policy of the head; defaults to the backbone's.
    """

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset
    train_step = train_step_holding_less
    make_train_function = make_train_function_with_built_optimizer
    quantize = quantize_backbone
    compile_from_config = compile_from_saved_config
    preprocessor_cls = BEiTImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        activation=None,
        dropout=0.0,
        head_dtype=None,
        **kwargs,
    ):
        # Recorded only when given, so a reloaded head follows its backbone otherwise.
        self.head_dtype = head_dtype and keras.dtype_policies.serialize(keras.dtype_policies.get(head_dtype))
        head_dtype = head_dtype or backbone.dtype_policy
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = BEiTPooler(
            backbone.use_mean_pooling, backbone.layer_norm_epsilon, dtype=head_dtype, name="pooler"
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )
        # Set before Task.__init__, whose automatic compile() reads it.
        self.activation = activation

        # === Functional model ===
        inputs = backbone.input
        pooled = self.pooler(backbone(inputs))
        outputs = self.output_dense(self.output_dropout(pooled))
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.dropout = dropout
        finish_tracking(self)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        return super().preprocess_samples(x, validated_labels(y, self.num_classes), sample_weight)

    def get_config(self):
        config = Task.get_config(self)
        config.update(
            {
                "num_classes": self.num_classes,
                "activation": self.activation,
                "dropout": self.dropout,
                "head_dtype": self.head_dtype,
            }
        )
        return config
