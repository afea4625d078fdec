"""BEiTImageSegmenter: FPN features, UperNet decode head and FCN auxiliary head."""

import keras
import numpy as np
from keras import ops
from keras_hub.models import ImageSegmenter
from keras_hub.models import Task
from keras_hub.src.utils.keras_utils import standardize_data_format

from keras_beit.layers.layout import channel_axis
from keras_beit.layers.upernet import BEiTFCNHead
from keras_beit.layers.upernet import BEiTUperNetHead
from keras_beit.layers.upernet import resize_bilinear
from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.label_checks import validated_labels
from keras_beit.models.preprocessors import BEiTImageSegmenterPreprocessor
from keras_beit.models.preset_loading import routed_from_preset
from keras_beit.models.quantization import quantize_backbone
from keras_beit.models.saved_compile import compile_from_saved_config
from keras_beit.models.segmentation_metrics import BEiTMeanIoU
from keras_beit.models.tracking import finish_tracking
from keras_beit.models.train_step import make_train_function_with_built_optimizer, train_step_holding_less


def _as_label_map(labels, data_format="channels_last"):
    if len(labels.shape) == 4:  # one-channel maps, in the model's layout
        labels = labels[:, 0] if data_format == "channels_first" else labels[..., 0]
    return ops.cast(labels, "int32")


def upsample_logits(logits, size, data_format="channels_last"):
    """Bilinear resize of (B, h, w, C) logits to `size`, align_corners False,
    returned channels last whatever `data_format` the logits arrive in."""
    if data_format == "channels_first":
        logits = ops.transpose(logits, (0, 2, 3, 1))
    return resize_bilinear(logits, size)


def _per_pixel(sample_weight, labels):
    """Sample weights, one per image or one per pixel, as a map shaped like `labels`.

    Flattening each image's weights first needs no static rank, which
    TensorFlow drops when it retraces for another weight shape.
    """
    if sample_weight is None:
        return None
    batch, height, width = ops.shape(labels)
    weights = ops.reshape(ops.cast(sample_weight, "float32"), (batch, -1))
    return ops.reshape(ops.broadcast_to(weights, (batch, height * width)), (batch, height, width))


def pixel_cross_entropy(labels, logits, ignore_index=255, data_format="channels_last"):
    """Cross-entropy per pixel, logits upsampled to the labels, weighted so
    that its mean is the mean over non-ignored pixels: the arithmetic of
    transformers' ForSemanticSegmentationLoss."""
    labels = _as_label_map(labels, data_format)
    logits = ops.cast(upsample_logits(logits, labels.shape[1:3], data_format), "float32")
    valid = ops.not_equal(labels, ignore_index)
    safe_labels = ops.where(valid, labels, 0)
    per_pixel = ops.sparse_categorical_crossentropy(safe_labels, logits, from_logits=True)
    valid = ops.cast(valid, "float32")
    pixels = ops.cast(ops.size(valid), "float32")
    return per_pixel * valid * (pixels / ops.maximum(ops.sum(valid), 1.0))


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTSegmentationLoss(keras.losses.Loss):
    """Pixel cross-entropy that ignores `ignore_index`, on upsampled logits.

    `data_format` says where the logits keep their classes: last, or at
    axis 1 ("channels_first"); by default Keras' `image_data_format()`.
    `call` returns the weighted per-pixel losses and leaves their mean to
    Keras, which also divides it by the replica count under tf.distribute,
    as for its own losses. A loss reduced to a scalar escapes that scaling:
    its gradients doubled on two replicas.
    """

    def __init__(self, ignore_index=255, data_format=None, name="segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = ignore_index
        self.data_format = standardize_data_format(data_format)

    def call(self, y_true, y_pred):
        return pixel_cross_entropy(y_true, y_pred, self.ignore_index, self.data_format)

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index, "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTImageSegmenter(ImageSegmenter):
    """Semantic segmentation with BEiT, UperNet and an FCN auxiliary head.

    The backbone's FPN pyramid (strides 4 to 32) feeds a UperNet decode head
    (PSP pooling at `pool_scales` with PyTorch's overlapping adaptive-pool
    bins, lateral and FPN convs, a fused bottleneck, a 1x1 classifier), as in
    the original BEiT ADE20K models and transformers'
    BeitForSemanticSegmentation. Logits come out at 1/4 of the input size,
    `(batch, H/4, W/4, num_classes)`, or `(batch, num_classes, H/4, W/4)`
    for a channels-first backbone; `post_process` upsamples them.

    In training the output also carries the auxiliary FCN head's logits
    (on the third pyramid level), and the loss adds `auxiliary_loss_weight`
    times its cross-entropy. Labels are class maps `(batch, H, W)`;
    `ignore_index` pixels count for nothing. `compile()` with no arguments
    uses Adam(5e-5), that loss and a mean-IoU metric that ignores
    `ignore_index`.

    Args:
        backbone: a `BEiTBackbone` with `use_fpn=True` and four out_indices.
        num_classes: number of classes.
        preprocessor: a `BEiTImageSegmenterPreprocessor` or None.
        pool_scales: PSP output sizes.
        use_auxiliary_head: build the FCN auxiliary head.
        auxiliary_channels: width of the auxiliary head's convs.
        auxiliary_num_convs: 3x3 conv blocks in the auxiliary head.
        auxiliary_concat_input: concatenate the head's input before its classifier.
        auxiliary_loss_weight: weight of the auxiliary loss in training.
        ignore_index: label value that is ignored by the loss and metric.
    """

    backbone_cls = BEiTBackbone
    from_preset = routed_from_preset
    train_step = train_step_holding_less
    make_train_function = make_train_function_with_built_optimizer
    quantize = quantize_backbone
    compile_from_config = compile_from_saved_config
    preprocessor_cls = BEiTImageSegmenterPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        pool_scales=(1, 2, 3, 6),
        use_auxiliary_head=True,
        auxiliary_channels=256,
        auxiliary_num_convs=1,
        auxiliary_concat_input=False,
        auxiliary_loss_weight=0.4,
        ignore_index=255,
        **kwargs,
    ):
        if not backbone.use_fpn:
            raise ValueError(
                "BEiTImageSegmenter needs a backbone built with use_fpn=True and four out_indices."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        policy = backbone.dtype_policy
        data_format = backbone.data_format
        self.feature_extractor = keras.Model(backbone.inputs, list(backbone.pyramid_outputs.values()))
        self.decode_head = BEiTUperNetHead(
            backbone.hidden_dim,
            num_classes,
            pool_scales=pool_scales,
            data_format=data_format,
            dtype=policy,
            name="decode_head",
        )
        self.auxiliary_head = None
        if use_auxiliary_head:
            self.auxiliary_head = BEiTFCNHead(
                backbone.hidden_dim,
                num_classes,
                channels=auxiliary_channels,
                num_convs=auxiliary_num_convs,
                concat_input=auxiliary_concat_input,
                data_format=data_format,
                dtype=policy,
                name="auxiliary_head",
            )

        # Read by compile(), which Task.__init__ calls.
        self.num_classes = num_classes
        self.ignore_index = ignore_index

        # === Functional model ===
        inputs = backbone.input
        features = self.feature_extractor(inputs)
        outputs = {"logits": self.decode_head(features)}
        if self.auxiliary_head is not None:
            outputs["auxiliary_logits"] = self.auxiliary_head(features[2])
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.pool_scales = tuple(pool_scales)
        self.use_auxiliary_head = use_auxiliary_head
        self.auxiliary_channels = auxiliary_channels
        self.auxiliary_num_convs = auxiliary_num_convs
        self.auxiliary_concat_input = auxiliary_concat_input
        self.auxiliary_loss_weight = auxiliary_loss_weight
        # Blocks after the last tap are outside the graph.
        finish_tracking(self, backbone=backbone)

    def call(self, inputs, training=None, return_auxiliary=None):
        """Logits; in training (or with `return_auxiliary`) a dict that adds
        "auxiliary_logits", which serve the training loss only."""
        outputs = super().call(inputs, training=training)
        if not isinstance(outputs, dict):
            return outputs
        if return_auxiliary is None:
            return_auxiliary = bool(training)
        return outputs if return_auxiliary else outputs["logits"]

    @property
    def data_format(self):
        """The backbone's: where the logits keep their classes."""
        return self.backbone.data_format

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Adam(5e-5), `BEiTSegmentationLoss` and mean IoU by default, all ignoring `ignore_index`."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(5e-5)
        if loss == "auto":
            loss = BEiTSegmentationLoss(self.ignore_index, self.data_format)
        if metrics == "auto":
            metrics = [
                BEiTMeanIoU(
                    self.num_classes, ignore_class=self.ignore_index, sparse_y_pred=False, name="mean_iou"
                )
            ]
        Task.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        # Checked after preprocessing: the preprocessor may reduce ADE20K's
        # raw labels 1..num_classes to 0..num_classes - 1.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(super().preprocess_samples(x, y, sample_weight))
        note = ""
        if getattr(self.preprocessor, "reduce_labels", False):
            # reduce_labels always sends 0 to 255, so raw 0 is allowed only when 255 is ignored.
            lowest = 0 if self.ignore_index == 255 else 1
            note = (
                f", checked after the preprocessor reduce_labels (label - 1, 0 becomes 255): raw labels "
                f"{lowest} to {self.num_classes}"
            )
        y = validated_labels(y, self.num_classes, ignore_index=self.ignore_index, note=note)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        auxiliary = None
        if isinstance(y_pred, dict):
            y_pred, auxiliary = y_pred["logits"], y_pred.get("auxiliary_logits")
        sample_weight = _per_pixel(sample_weight, _as_label_map(y, self.data_format))
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if auxiliary is not None and training:
            auxiliary_loss = BEiTSegmentationLoss(self.ignore_index, self.data_format)
            loss = loss + self.auxiliary_loss_weight * auxiliary_loss(y, auxiliary, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        labels = _as_label_map(y, self.data_format)
        logits = upsample_logits(y_pred, labels.shape[1:3], self.data_format)
        return super().compute_metrics(x, labels, logits, _per_pixel(sample_weight, labels))

    def post_process(self, logits, target_size=None):
        """Label maps `(batch, height, width)` from logits, like transformers'
        `post_process_semantic_segmentation`: bilinear upsampling to
        `target_size` (when given), then the arg-max class.

        `target_size` is one `(height, width)` for the whole batch, or a list
        with one per image (transformers' `target_sizes`, for images of
        different sizes); then the result is a list of label maps.
        """
        logits = ops.convert_to_tensor(logits)
        if target_size is not None and np.ndim(target_size) == 2:
            if len(target_size) != logits.shape[0]:
                raise ValueError(
                    f"target_size lists {len(target_size)} sizes for a batch of {logits.shape[0]} images; "
                    "pass one (height, width) per image, or a single (height, width) for all."
                )
            return [self.post_process(logits[i : i + 1], size)[0] for i, size in enumerate(target_size)]
        if target_size is None:
            return ops.argmax(logits, axis=channel_axis(self.data_format))
        return ops.argmax(upsample_logits(logits, tuple(target_size), self.data_format), axis=-1)

    def get_config(self):
        config = Task.get_config(self)
        config.update(
            {
                "num_classes": self.num_classes,
                "pool_scales": self.pool_scales,
                "use_auxiliary_head": self.use_auxiliary_head,
                "auxiliary_channels": self.auxiliary_channels,
                "auxiliary_num_convs": self.auxiliary_num_convs,
                "auxiliary_concat_input": self.auxiliary_concat_input,
                "auxiliary_loss_weight": self.auxiliary_loss_weight,
                "ignore_index": self.ignore_index,
            }
        )
        return config
