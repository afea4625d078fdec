"""Tiny random transformers BEiT models, saved in the hub's file layout.

The transformers model stays in memory as the reference: transformers 5
reloads some legacy layouts into the wrong modules, so outputs are always
taken from the instance that wrote the checkpoint.
"""

import numpy as np
import torch
import transformers

TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.0,
    vocab_size=40,
    num_labels=5,
)


def randomize(model, seed=0):
    """Gives every parameter and BatchNorm statistic a random, distinctive value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and ("norm" in name or ".bn." in name or "fpn1.1" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim >= 2 and "relative_position_bias_table" not in name and "token" not in name \
                    and "position_embeddings" not in name:
                # Matrices and kernels at about unit gain, so deep heads keep O(1) activations.
                fan_in = param[0].numel() if "fpn" not in name else param.shape[0] * param[0, 0].numel()
                param.copy_(noise / fan_in**0.5)
            else:
                param.copy_(0.3 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model.eval()


def save_model(model_cls, directory, seed=0, **config):
    """Builds `model_cls` from a tiny BeitConfig, randomises it and saves it."""
    config = transformers.BeitConfig(**{**TINY, **config})
    model = randomize(model_cls(config), seed)
    model.save_pretrained(directory)
    return model


def to_torch(images_nhwc):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2))))


def run(model, images_nhwc, **kwargs):
    with torch.no_grad():
        return model(pixel_values=to_torch(images_nhwc), **kwargs)
