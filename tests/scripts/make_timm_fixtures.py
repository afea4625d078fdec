"""Writes tests/fixtures/timm: tiny random timm BEiT models and timm's outputs.

timm needs torchvision, which on this team's machines means a multi-GB torch
build, so the suite does not install it. This script is run once, by hand, in
an environment that has timm (`pip install "torch==2.14.1" "torchvision==0.29.1"
timm`); the suite then checks keras_beit on every backend against the numbers
timm itself produced:

    python tests/scripts/make_timm_fixtures.py [OUTPUT_DIR]

Each case is a directory as `timm.models.save_for_hf` writes it (config.json
plus model.safetensors or pytorch_model.bin), with every parameter
randomised, and `reference.npz` holding the inputs (NCHW, as timm takes them)
and timm's outputs: `forward_features`, `forward_head(pre_logits=True)` and
the logits; for cases with a `resized` size, also the logits of the model
timm builds at that size from the saved file (`pretrained=True`, which
resizes the tables with timm's `checkpoint_filter_fn`).
"""

import json
import os
import shutil
import sys

import numpy as np
import timm
import torch
from timm.models import save_for_hf

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.5, num_classes=5)
CASES = {
    # BEiT v2 fine-tuned: per-block tables, layer scale, mean pooling with fc_norm.
    "beitv2_avg": dict(architecture="beitv2_base_patch16_224", resized=(48, 40)),
    # BEiT v1 with the CLS token: the final norm instead of fc_norm; pickled weights.
    "beit_token_bin": dict(architecture="beit_base_patch16_224", global_pool="token", safe_serialization=False),
    # One table shared by every block, absolute positions, no layer scale, no q/v biases.
    "beit_shared_abs": dict(
        architecture="beit_base_patch16_224", use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
        use_abs_pos_emb=True, init_values=0.0, qkv_bias=False, resized=(24, 40),  # shrinks and enlarges
    ),
}


def randomize(model, seed):
    """A distinctive random value for every parameter (timm starts tables and biases at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("weight") and param.ndim >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)  # about unit gain
            else:  # biases, layer scales, tables, cls token, positions
                param.copy_(0.3 * noise)
    return model.eval()


def write_case(name, spec, root, seed):
    spec = dict(spec)
    architecture = spec.pop("architecture")
    resized = spec.pop("resized", None)
    safe = spec.pop("safe_serialization", True)
    model_args = {**TINY, **spec}
    model = randomize(timm.create_model(architecture, pretrained=False, **model_args), seed)
    directory = os.path.join(root, name)
    shutil.rmtree(directory, ignore_errors=True)
    save_for_hf(model, directory, model_args=model_args, safe_serialization=safe)

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 3, 32, 32)).astype("float32")
    reference = {"images": images}
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(images))
        reference["features"] = features.numpy()
        reference["pre_logits"] = model.forward_head(features, pre_logits=True).numpy()
        reference["logits"] = model.forward_head(features).numpy()
        if resized is not None:
            weights = "model.safetensors" if safe else "pytorch_model.bin"
            # num_classes in the overlay, or timm drops the head of a file with other than 1000 classes.
            overlay = {"file": os.path.join(directory, weights), "num_classes": model_args["num_classes"]}
            resized_model = timm.create_model(
                architecture, pretrained=True, pretrained_cfg_overlay=overlay, **{**model_args, "img_size": resized}
            ).eval()
            assert torch.equal(resized_model.head.weight, model.head.weight)
            resized_images = rng.normal(size=(2, 3, *resized)).astype("float32")
            reference["resized_images"] = resized_images
            reference["resized_logits"] = resized_model(torch.from_numpy(resized_images)).numpy()
    np.savez(os.path.join(directory, "reference.npz"), **reference)
    with open(os.path.join(directory, "config.json")) as f:
        written = json.load(f)
    print(f"{name}: {architecture} {sorted(os.listdir(directory))} global_pool={written['global_pool']!r}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures", "timm")
    os.makedirs(root, exist_ok=True)
    for seed, (name, spec) in enumerate(CASES.items()):
        write_case(name, spec, root, seed)
    with open(os.path.join(root, "VERSIONS.json"), "w") as f:
        json.dump({"timm": timm.__version__, "torch": torch.__version__.split("+")[0]}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
