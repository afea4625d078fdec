"""`keras-beit convert --verify`: the source implementation on the same input.

As keras-hub's conversion tools do before publishing, a converted model is
run next to the implementation its checkpoint came from, on one random
image, and the max abs difference is reported:

- a transformers directory runs in transformers (`from_pretrained`);
- a timm directory runs in timm when timm is installed; otherwise, and for
  an original unilm or mmseg `.pth`, the tensors are renamed to
  transformers' names, with the mapping transformers' own conversion script
  (`convert_beit_unilm_to_pytorch.py`) applies, and run in transformers.

Segmentation models tap the blocks our backbone taps (`out_indices`), with
transformers' FPN and heads, since transformers' segmentation model taps
other blocks than the original (see `tap_points`).
"""

import os
import re
import tempfile

import numpy as np

from keras_beit.convert.checkpoint_io import read_state_dict
from keras_beit.convert.mmseg import mmseg_state
from keras_beit.convert.timm import architecture_name
from keras_beit.convert.timm import timm_model_args
from keras_beit.convert.unilm import normalize_state
from keras_beit.convert.unilm import read_original_file
from keras_beit.convert.unilm import tensors_only
from keras_beit.convert.unilm import unwrap_checkpoint
from keras_beit.models.image_classifier import BEiTImageClassifier
from keras_beit.models.image_segmenter import BEiTImageSegmenter
from keras_beit.models.masked_image_modeler import BEiTMaskedImageModeler

# Original (unilm/timm) names to transformers' legacy names, as transformers' conversion script renames them.
_ORIGINAL_TO_TRANSFORMERS = (
    (r"^cls_token$", "beit.embeddings.cls_token"),
    (r"^mask_token$", "beit.embeddings.mask_token"),
    (r"^pos_embed$", "beit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "beit.embeddings.patch_embeddings.projection."),
    (r"^rel_pos_bias\.relative_position_bias_table$", "beit.encoder.relative_position_bias.relative_position_bias_table"),
    (r"^blocks\.(\d+)\.norm1\.", r"beit.encoder.layer.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", r"beit.encoder.layer.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.q_bias$", r"beit.encoder.layer.\1.attention.attention.query.bias"),
    (r"^blocks\.(\d+)\.attn\.v_bias$", r"beit.encoder.layer.\1.attention.attention.value.bias"),
    (r"^blocks\.(\d+)\.attn\.relative_position_bias_table$",
     r"beit.encoder.layer.\1.attention.attention.relative_position_bias.relative_position_bias_table"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"beit.encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"beit.encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"beit.encoder.layer.\1.output.dense."),
    (r"^blocks\.(\d+)\.gamma_(\d)$", r"beit.encoder.layer.\1.lambda_\2"),
    (r"^fc_norm\.", "beit.pooler.layernorm."),
    (r"^head\.", "classifier."),
    (r"^lm_head\.", "lm_head."),
    (r"^(fpn[12]|decode_head|auxiliary_head)\.", r"\1."),
)
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.weight$")


def original_to_transformers(state, masked_image_modeling=False):
    """An original-layout state dict in transformers' legacy names."""
    renamed = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "num_batches_tracked")):
            continue  # buffers the reference recomputes or never reads
        qkv = _QKV.match(key)
        if qkv:
            prefix = f"beit.encoder.layer.{qkv.group(1)}.attention.attention"
            for name, rows in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
                renamed[f"{prefix}.{name}.weight"] = rows
            continue
        if key.startswith("norm."):
            # The MIM head's norm is top-level in transformers; a CLS-pooling model's is the encoder's.
            renamed[("layernorm." if masked_image_modeling else "beit.layernorm.") + key[len("norm."):]] = value
            continue
        for pattern, replacement in _ORIGINAL_TO_TRANSFORMERS:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new_key] = value
                break
        else:
            raise KeyError(f"No transformers name for {key}.")
    return renamed


def transformers_config(model):
    """A transformers BeitConfig dict describing a keras_beit model."""
    backbone = getattr(model, "backbone", model)
    height, width = backbone.image_shape[:2]
    if isinstance(model, BEiTImageSegmenter):
        architecture = "BeitForSemanticSegmentation"
    elif isinstance(model, BEiTImageClassifier):
        architecture = "BeitForImageClassification"
    elif isinstance(model, BEiTMaskedImageModeler):
        architecture = "BeitForMaskedImageModeling"
    else:
        architecture = "BeitModel"
    config = {
        "architectures": [architecture], "model_type": "beit", "image_size": height, "patch_size": backbone.patch_size,
        "num_channels": backbone.image_shape[-1], "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers, "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
        "use_absolute_position_embeddings": backbone.use_absolute_position_embeddings,
        "use_relative_position_bias": bool(backbone.relative_position_biases),
        "use_shared_relative_position_bias": backbone.shared_relative_position_bias is not None,
        "use_mask_token": backbone.use_mask_token,
        "layer_scale_init_value": backbone.layer_scale_init_value,
        "layer_norm_eps": backbone.layer_norm_epsilon, "use_mean_pooling": backbone.use_mean_pooling,
    }
    if height != width:
        raise ValueError("--verify of an original checkpoint needs a square image size.")
    if isinstance(model, BEiTImageClassifier):
        config["num_labels"] = model.num_classes
    if isinstance(model, BEiTMaskedImageModeler):
        config["vocab_size"] = model.vocabulary_size
    if isinstance(model, BEiTImageSegmenter):
        auxiliary = model.auxiliary_head
        config.update(
            num_labels=model.num_classes, pool_scales=list(model.decode_head.pool_scales),
            out_indices=[1, 2, 3, 4],  # unused: the taps are ours (see segmentation_reference)
            use_auxiliary_head=auxiliary is not None,
            auxiliary_channels=auxiliary.channels if auxiliary else 256,
            auxiliary_num_convs=auxiliary.num_convs if auxiliary else 1,
            auxiliary_concat_input=bool(auxiliary and auxiliary.concat_input),
        )
    return config


def _with_exact_names(reference, state):
    """`reference` with every file tensor whose key is one of its own parameter names put there.

    transformers 5 maps legacy keys onto renamed modules as it loads, and
    swaps some: a masked-image-modeling model without mean pooling has two
    final LayerNorms (`beit.layernorm`, `layernorm`), and 5.24 loads each
    into the other. Legacy files were written by name, so a key that is
    also a name in the model is that parameter.
    """
    import torch

    own = reference.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if key in own and tuple(own[key].shape) == tuple(value.shape):
                own[key].copy_(torch.from_numpy(np.array(value)))
    return reference


def _from_transformers_state(state, config):
    """A transformers model from legacy-named tensors, through its own loading code."""
    import json

    import transformers
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
        save_file({k: np.array(v) for k, v in state.items()}, os.path.join(directory, "model.safetensors"))
        model_cls = getattr(transformers, config["architectures"][0])
        reference, info = model_cls.from_pretrained(directory, output_loading_info=True)
    buffers = ("relative_position_index", "num_batches_tracked")
    missing = [k for k in info["missing_keys"] if not k.endswith(buffers)]
    if config["architectures"][0] == "BeitModel":
        # A backbone is compared on last_hidden_state, which BeitModel's pooler never touches.
        missing = [k for k in missing if not k.startswith("pooler.")]
    left = missing + list(info["unexpected_keys"])
    if left:
        raise ValueError(f"The transformers reference did not take every tensor: {sorted(left)[:10]}")
    return _with_exact_names(reference, state).eval()


def reference_model(source, model):
    """(torch module, description) of the source implementation for `model`."""
    import transformers

    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
        import json

        with open(os.path.join(source, "config.json")) as f:
            config = json.load(f)
        if "architecture" not in config:
            architecture = (config.get("architectures") or ["BeitModel"])[0]
            reference = getattr(transformers, architecture).from_pretrained(source)
            return _with_exact_names(reference, read_state_dict(source)).eval(), "transformers"
        try:
            import timm
        except ImportError:
            state = normalize_state(read_state_dict(source))  # zero q/v biases for qkv_bias=False
            description = "transformers, on the timm tensors renamed (timm is not installed)"
        else:
            # timm 1.0 repeats num_classes inside model_args; the top-level value wins, as in timm.
            arguments = {**timm_model_args(config), "num_classes": config.get("num_classes", 0)}
            reference = timm.create_model(architecture_name(config), pretrained=False, **arguments)
            # Strict: timm's relative_position_index buffers are not persistent, so every key must fit.
            reference.load_state_dict(_torch_state(read_state_dict(source)))
            return reference.eval(), "timm"
    else:
        checkpoint = read_original_file(source)
        state = mmseg_state(checkpoint)
        if state is None:
            state = normalize_state(tensors_only(unwrap_checkpoint(checkpoint)))
        description = "transformers, on the original tensors renamed"
    masked = isinstance(model, BEiTMaskedImageModeler)
    legacy = original_to_transformers(state, masked_image_modeling=masked)
    return _from_transformers_state(legacy, transformers_config(model)), description


def _torch_state(state):
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def segmentation_reference(reference, pixels, out_indices, grid):
    """transformers' FPN and decode head on the outputs of blocks `out_indices` (0-based)."""
    base = reference.beit if hasattr(reference, "beit") else reference.data2vec_vision
    hidden = base(pixels, output_hidden_states=True).hidden_states
    batch = pixels.shape[0]
    maps = [hidden[i + 1][:, 1:].transpose(1, 2).reshape(batch, -1, *grid) for i in out_indices]
    return reference.decode_head(reference.fpn(maps))


def max_difference(source, model):
    """Runs `model` and the source implementation on one random image; the max abs difference."""
    import keras
    import torch

    reference, description = reference_model(source, model)
    backbone = getattr(model, "backbone", model)
    height, width = (s or 224 for s in backbone.image_shape[:2])
    images = np.random.default_rng(0).normal(size=(1, height, width, backbone.image_shape[-1])).astype("float32")
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    inputs, extra = images, {}
    if isinstance(model, BEiTMaskedImageModeler):
        patches = (height // backbone.patch_size) * (width // backbone.patch_size)
        mask = np.random.default_rng(1).random((1, patches)) < 0.4
        inputs, extra = {"images": images, "mask": mask}, {"bool_masked_pos": torch.from_numpy(mask)}
    with torch.no_grad():
        if isinstance(model, BEiTImageSegmenter):
            grid = (height // backbone.patch_size, width // backbone.patch_size)
            expected = segmentation_reference(reference, pixels, backbone.out_indices, grid)
        elif description == "timm":
            # A timm model without a head (num_classes 0) is compared on its tokens, as our backbone outputs them.
            head = isinstance(model, BEiTImageClassifier)
            expected = reference(pixels) if head else reference.forward_features(pixels)
        else:
            outputs = reference(pixel_values=pixels, **extra)
            expected = outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state
    expected = expected.numpy()
    if expected.ndim == 4:  # segmentation logits are channels-first in torch
        expected = expected.transpose(0, 2, 3, 1)
    actual = keras.ops.convert_to_numpy(model(inputs))
    return float(np.max(np.abs(actual - expected))), description
