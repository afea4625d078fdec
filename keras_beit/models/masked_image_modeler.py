"""BEiTMaskedImageModeler: predicts visual tokens of masked patches."""

import keras
import numpy as np
from keras import ops
from keras_hub.models import Task

from keras_beit.layers.backward import LayerNormalization
from keras_beit.layers.layout import spatial_dims
from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.label_checks import validated_labels
from keras_beit.models.preset_loading import routed_from_preset
from keras_beit.models.quantization import quantize_backbone
from keras_beit.models.saved_compile import compile_from_saved_config
from keras_beit.models.tracking import finish_tracking
from keras_beit.models.train_step import make_train_function_with_built_optimizer, train_step_holding_less


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTMaskedImageModeler(Task):
    """BEiT's masked image modeling (MIM) pre-training head.

    Input: `{"images": (batch, H, W, C), "mask": (batch, patches) bool}`.
    Masked patches are replaced by the backbone's mask token. Output: logits
    over the visual-token vocabulary for every patch position,
    `(batch, patches, vocabulary_size)`, as transformers'
    BeitForMaskedImageModeling returns them. Labels are visual-token ids
    `(batch, patches)`; the loss and accuracy count masked positions only.

    Args:
        backbone: a `BEiTBackbone` built with `use_mask_token=True`.
        vocabulary_size: size of the visual-token codebook (8192 for the
            DALL-E tokenizer of BEiT v1).
        preprocessor: optional preprocessor applied in fit/predict.
    """

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset
    train_step = train_step_holding_less
    make_train_function = make_train_function_with_built_optimizer
    quantize = quantize_backbone
    compile_from_config = compile_from_saved_config
    preprocessor_cls = None

    def __init__(self, backbone, vocabulary_size=8192, preprocessor=None, **kwargs):
        if not backbone.use_mask_token:
            raise ValueError(
                "BEiTMaskedImageModeler needs a backbone built with use_mask_token=True."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.norm = LayerNormalization(
            epsilon=backbone.layer_norm_epsilon, dtype=backbone.dtype_policy, name="norm"
        )
        self.lm_head = keras.layers.Dense(
            vocabulary_size, dtype=backbone.dtype_policy, name="lm_head"
        )

        # === Functional model ===
        images = keras.layers.Input(shape=backbone.image_shape, name="images")
        # One entry per patch; a known patch count lets exporters trace it as such.
        height, width = spatial_dims((None, *backbone.image_shape), backbone.data_format)
        patches = height * width // backbone.patch_size**2 if height and width else None
        mask = keras.layers.Input(shape=(patches,), dtype="bool", name="mask")
        sequence, _ = backbone.encode(images, mask)
        logits = self.lm_head(self.norm(sequence)[:, 1:])
        Task.__init__(self, inputs={"images": images, "mask": mask}, outputs=logits, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        finish_tracking(self)

    def __call__(self, inputs, *args, **kwargs):
        # Keras refuses inputs that mix tensors and numpy arrays, such as an
        # image converter's pixels beside a numpy mask.
        inputs = keras.tree.map_structure(
            lambda value: ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value, inputs
        )
        return super().__call__(inputs, *args, **kwargs)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        return super().preprocess_samples(x, validated_labels(y, self.vocabulary_size), sample_weight)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Adam(5e-5), cross-entropy and accuracy over masked positions by default."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(5e-5)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def _masked_weight(self, x, sample_weight):
        """The mask as loss weights, times sample weights per image or per patch.

        Flattening each image's weights needs no static rank, which
        TensorFlow drops when it retraces for another weight shape.
        """
        weight = ops.cast(x["mask"], "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (ops.shape(weight)[0], -1))
        return weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=self._masked_weight(x, sample_weight), **kwargs
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred, self._masked_weight(x, sample_weight))

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary_size": self.vocabulary_size})
        return config
