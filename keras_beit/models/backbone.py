"""BEiTBackbone: images to the final token sequence."""

import keras
from keras_hub.models import FeaturePyramidBackbone
from keras_hub.src.utils.keras_utils import standardize_data_format

from keras_beit.layers.backward import LayerNormalization
from keras_beit.layers.block import BEiTBlock
from keras_beit.layers.feature_map import TokensToFeatureMap
from keras_beit.layers.fpn import BEiTFPNNeck
from keras_beit.layers.patch_embedding import BEiTPatchEmbedding
from keras_beit.layers.relative_position_bias import BEiTRelativePositionBias, RelativePositionIndex
from keras_beit.models.preset_loading import routed_from_preset
from keras_beit.models.tracking import finish_tracking


def _spatial(image_shape, data_format):
    return tuple(image_shape[:2]) if data_format == "channels_last" else tuple(image_shape[1:])


@keras.saving.register_keras_serializable(package="keras_beit")
class BEiTBackbone(FeaturePyramidBackbone):
    """The BEiT vision transformer (Bao, Dong and Wei, 2021).

    Images `(batch, height, width, channels)` go in; the final token sequence
    `(batch, 1 + patches, hidden_dim)` comes out, CLS token first. Height and
    width may be None: any size that `patch_size` divides runs, with the
    relative position bias and absolute position embeddings resized to the
    input's patch grid.

    `pyramid_outputs` holds feature maps `(batch, h, w, hidden_dim)`
    (`(batch, hidden_dim, h, w)` when channels first; CLS dropped) of the blocks in `out_indices`, keyed "stage{i + 1}" for block i
    ("stem" for the embedding output, index -1). With `use_fpn`, four tapped
    maps go through the FPN neck instead and come out as "P2" ... "P5", at
    strides patch_size / 4, / 2, x 1 and x 2 (4, 8, 16, 32 for patch 16).
    `encode()` returns the token sequences of every block.

    Tap points: out_indices count blocks from 0 and take each block's
    output, as the original BEiT segmentation code (and the official ADE20K
    weights) do. transformers' BeitForSemanticSegmentation takes
    `hidden_states[i - 1]` (block i - 2) and BeitBackbone `hidden_states[i]`
    (block i - 1) for the same numbers; the transformers loader translates.

    Args:
        image_shape: input shape; height and width may be None.
        patch_size: side of a square patch in pixels.
        hidden_dim: token width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        intermediate_dim: MLP hidden width.
        use_absolute_position_embeddings: learned absolute positions (DiT).
        use_relative_position_bias: a relative position bias table per block.
        use_shared_relative_position_bias: one table shared by all blocks.
            Both kinds may be on at once; their biases add.
        use_mask_token: a mask token for masked image modeling.
        layer_scale_init_value: initial layer scale; 0 turns layer scale off.
        drop_path_rate: stochastic depth, rising linearly from 0 at the
            first block to this value at the last.
        dropout_rate: dropout after the embeddings, attention and MLP.
        attention_dropout_rate: dropout on attention probabilities.
        layer_norm_epsilon: epsilon of every LayerNorm (transformers uses
            1e-12, the original code and timm 1e-6).
        use_mean_pooling: heads pool by the mean of the patch tokens; when
            False, a final LayerNorm is applied to the sequence and heads use
            the CLS token.
        window_size: (height, width) patch grid the position tables were
            trained on; defaults to the image_shape grid.
        out_indices: 0-based blocks whose outputs form `pyramid_outputs`
            (-1 is the embedding output); default every block.
        use_fpn: pass four tapped maps through the FPN neck (segmentation).
        gradient_checkpointing: recompute each block's activations in the
            backward pass instead of storing them (`keras.remat`), for large
            models at 512 and 640.
        data_format: "channels_last" or "channels_first" images and feature
            maps; by default Keras' `image_data_format()`. Channels first is
            PyTorch's layout: on the torch backend it spares the segmentation
            heads the layout copies Keras makes around every convolution.
        dtype: dtype policy.
    """

    from_preset = routed_from_preset

    def __init__(
        self,
        image_shape=(224, 224, 3),
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        intermediate_dim=3072,
        use_absolute_position_embeddings=False,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        use_mask_token=False,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        layer_norm_epsilon=1e-12,
        use_mean_pooling=True,
        window_size=None,
        out_indices=None,
        use_fpn=False,
        gradient_checkpointing=False,
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        image_shape = tuple(image_shape)
        height, width = _spatial(image_shape, data_format)
        for name, size in (("height", height), ("width", width)):
            if size is not None and size % patch_size:
                raise ValueError(
                    f"The image {name} ({size}) must be a multiple of the patch "
                    f"size ({patch_size}); received image_shape={image_shape}."
                )
        if window_size is None:
            if height is None or width is None:
                raise ValueError(
                    "With an unknown image height or width, pass `window_size`, "
                    "the patch grid the position tables were trained on."
                )
            window_size = (height // patch_size, width // patch_size)
        window_size = tuple(int(s) for s in window_size)
        out_indices = tuple(range(num_layers)) if out_indices is None else tuple(out_indices)
        bad = [i for i in out_indices if not -1 <= i < num_layers]
        if bad:
            raise ValueError(
                f"out_indices must be block indices in [-1, {num_layers}); received {bad}."
            )
        if use_fpn and len(out_indices) != 4:
            raise ValueError(f"use_fpn needs exactly 4 out_indices; received {out_indices}.")
        num_channels = image_shape[-1] if data_format == "channels_last" else image_shape[0]

        # === Layers ===
        self.patch_embedding = BEiTPatchEmbedding(
            hidden_dim,
            patch_size,
            num_channels,
            window_size,
            use_mask_token=use_mask_token,
            use_absolute_position_embeddings=use_absolute_position_embeddings,
            data_format=data_format,
            dtype=dtype,
            name="patch_embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout_rate, dtype=dtype, name="embedding_dropout"
        )
        bias_args = dict(
            window_size=window_size,
            num_heads=num_heads,
            patch_size=patch_size,
            data_format=data_format,
            dtype=dtype,
        )
        self.shared_relative_position_bias = (
            BEiTRelativePositionBias(name="shared_relative_position_bias", **bias_args)
            if use_shared_relative_position_bias
            else None
        )
        self.relative_position_biases = [
            BEiTRelativePositionBias(name=f"relative_position_bias_{i}", **bias_args)
            for i in range(num_layers)
            if use_relative_position_bias
        ]
        self.blocks = [
            BEiTBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                layer_scale_init_value=layer_scale_init_value,
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                dropout_rate=dropout_rate,
                attention_dropout_rate=attention_dropout_rate,
                layer_norm_epsilon=layer_norm_epsilon,
                gradient_checkpointing=gradient_checkpointing,
                dtype=dtype,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = (
            None
            if use_mean_pooling
            else LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
            )
        )

        self.to_feature_map = TokensToFeatureMap(
            patch_size, data_format=data_format, dtype=dtype, name="to_feature_map"
        )
        self.fpn = BEiTFPNNeck(hidden_dim, data_format=data_format, dtype=dtype, name="fpn") if use_fpn else None

        # === Functional model ===
        images = keras.layers.Input(shape=image_shape, name="images")
        sequence, hidden_states = self.encode(images)
        maps = [self.to_feature_map(hidden_states[i + 1], images) for i in out_indices]
        if self.fpn is not None:
            pyramid_outputs = dict(zip(("P2", "P3", "P4", "P5"), self.fpn(maps)))
        else:
            names = ["stem" if i == -1 else f"stage{i + 1}" for i in out_indices]
            pyramid_outputs = dict(zip(names, maps))
        super().__init__(inputs=images, outputs=sequence, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.use_absolute_position_embeddings = use_absolute_position_embeddings
        self.use_relative_position_bias = use_relative_position_bias
        self.use_shared_relative_position_bias = use_shared_relative_position_bias
        self.use_mask_token = use_mask_token
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_mean_pooling = use_mean_pooling
        self.window_size = window_size
        self.out_indices = out_indices
        self.use_fpn = use_fpn
        self.gradient_checkpointing = gradient_checkpointing
        self.data_format = data_format
        self.pyramid_outputs = pyramid_outputs
        # The pyramid is a side output, outside the functional graph.
        finish_tracking(self, to_feature_map=self.to_feature_map, fpn=self.fpn)

    def encode(self, images, masked_patches=None, training=None, return_attention_scores=False):
        """Runs the backbone's layers; returns (sequence, hidden states).

        The hidden states are the embedding output followed by each block's
        output, before the final LayerNorm, as transformers'
        `output_hidden_states` returns them. Task models call this to feed a
        mask or to tap blocks while sharing the backbone's weights. With
        `return_attention_scores`, a third item lists each block's attention
        probabilities `(batch, heads, tokens, tokens)`.
        """
        x = self.patch_embedding(images, masked_patches=masked_patches)
        x = self.embedding_dropout(x, training=training)
        # A shared table alone is expanded once for every block. Per-block
        # tables reach their blocks as resized tables with one index, and are
        # expanded there: as full biases, they would all be alive at once.
        per_block = bool(self.relative_position_biases)
        shared = None
        if self.shared_relative_position_bias is not None:
            shared = self.shared_relative_position_bias(images, expand=not per_block)
        if per_block:
            embedding = self.patch_embedding
            index = RelativePositionIndex(embedding.patch_size, embedding.data_format)(images)
        hidden_states, attention_scores = [x], []
        for i, block in enumerate(self.blocks):
            bias = shared
            if per_block:
                bias = (self.relative_position_biases[i](images, shared_bias=shared, expand=False), index)
            x = block(x, bias=bias, training=training, return_attention_scores=return_attention_scores)
            if return_attention_scores:
                x, scores = x
                attention_scores.append(scores)
            hidden_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if return_attention_scores:
            return x, hidden_states, attention_scores
        return x, hidden_states

    @staticmethod
    def get_layout_map(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
        """A `keras.distribution.LayoutMap` sharding the blocks' weights (Megatron style).

        Query, key, value and the first MLP layer are split by output
        columns over the model axis, the attention output and the second
        MLP layer by input rows, so each block needs one reduction per
        sub-layer. Everything else is replicated. Use it with
        `keras.distribution.ModelParallel` (jax backend).
        """
        for name in (model_parallel_dim_name, data_parallel_dim_name):
            if name not in device_mesh.axis_names:
                raise ValueError(f"{name!r} is not an axis of the device mesh {device_mesh.axis_names}.")
        model, data = model_parallel_dim_name, data_parallel_dim_name
        layout_map = keras.distribution.LayoutMap(device_mesh)
        layout_map[r"block_\d+/attention/(query|key|value)/kernel"] = (data, model)
        layout_map[r"block_\d+/attention/(query|value)/bias"] = (model,)
        layout_map[r"block_\d+/attention/output_dense/kernel"] = (model, data)
        layout_map[r"block_\d+/fc1/kernel"] = (data, model)
        layout_map[r"block_\d+/fc1/bias"] = (model,)
        layout_map[r"block_\d+/fc2/kernel"] = (model, data)
        return layout_map

    def enable_lora(self, rank, target_layer_names=None):
        """LoRA of `rank` on the attention query and value projections.

        keras-hub freezes the backbone and adds low-rank factors to the
        layers named "query" and "value"; their biases are frozen here too,
        so only the LoRA factors (and the task's head) train.
        """
        super().enable_lora(rank, target_layer_names)
        for layer in self._flatten_layers():
            if getattr(layer, "lora_enabled", False) and getattr(layer, "bias", None) is not None:
                layer.bias.trainable = False

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "use_absolute_position_embeddings": self.use_absolute_position_embeddings,
                "use_relative_position_bias": self.use_relative_position_bias,
                "use_shared_relative_position_bias": self.use_shared_relative_position_bias,
                "use_mask_token": self.use_mask_token,
                "layer_scale_init_value": self.layer_scale_init_value,
                "drop_path_rate": self.drop_path_rate,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_mean_pooling": self.use_mean_pooling,
                "window_size": self.window_size,
                "out_indices": self.out_indices,
                "use_fpn": self.use_fpn,
                "gradient_checkpointing": self.gradient_checkpointing,
                "data_format": self.data_format,
            }
        )
        return config
