"""`keras-beit convert SOURCE OUTPUT_DIR` and `keras-beit presets`."""

import argparse
import json
import os
import sys


def _verify(source, model):
    """Runs the source implementation on the same input; returns the max abs difference."""
    import keras
    import numpy as np

    config_path = os.path.join(source, "config.json") if os.path.isdir(source) else None
    if config_path is None or not os.path.exists(config_path):
        raise SystemExit("--verify needs a transformers model directory as SOURCE.")
    import torch
    import transformers

    with open(config_path) as f:
        architecture = (json.load(f).get("architectures") or ["BeitModel"])[0]
    reference = getattr(transformers, architecture).from_pretrained(source).eval()
    backbone = getattr(model, "backbone", model)
    height, width = (s or 224 for s in backbone.image_shape[:2])
    images = np.random.default_rng(0).normal(size=(1, height, width, backbone.image_shape[-1])).astype("float32")
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    inputs, extra = images, {}
    if architecture.endswith("ForMaskedImageModeling"):
        patches = (height // backbone.patch_size) * (width // backbone.patch_size)
        mask = np.random.default_rng(1).random((1, patches)) < 0.4
        inputs, extra = {"images": images, "mask": mask}, {"bool_masked_pos": torch.from_numpy(mask)}
    with torch.no_grad():
        outputs = reference(pixel_values=pixels, **extra)
    expected = outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state
    expected = expected.numpy()
    if expected.ndim == 4:  # segmentation logits are channels-first in transformers
        expected = expected.transpose(0, 2, 3, 1)
    actual = keras.ops.convert_to_numpy(model(inputs))
    return float(np.max(np.abs(actual - expected)))


def convert_command(args):
    from keras_beit.convert.catalogue import convert

    kwargs = {}
    if args.image_size:
        kwargs["image_shape"] = (args.image_size, args.image_size, 3)
    convert(args.source, args.output_dir, **kwargs)
    print(f"Wrote a keras-hub preset to {args.output_dir}: {sorted(os.listdir(args.output_dir))}")
    if args.verify:
        import keras_beit  # noqa: F401  registers the classes

        from keras_beit.convert.catalogue import load_source

        model, _ = load_source(args.output_dir)
        error = _verify(args.source, model)
        print(f"max abs difference against the source implementation: {error:.3e}")
        if error > 1e-4:
            print("VERIFY FAILED: more than 1e-4", file=sys.stderr)
            return 1
    return 0


def presets_command(args):
    from keras_beit.presets import CATALOGUE

    for name, entry in CATALOGUE.items():
        metrics = ", ".join(f"{k} {v}" for k, v in entry["metrics"].items())
        sources = ", ".join(f"{k}: {v}" for k, v in entry["sources"].items())
        print(f"{name}\n    {entry['task']}; {metrics or 'no published metric'}\n    {sources}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-beit", description="BEiT checkpoints for Keras.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="convert a checkpoint to a keras-hub preset")
    convert_parser.add_argument("source", help="a transformers or timm directory, a .pth file, a catalogue name or hf:// handle")
    convert_parser.add_argument("output_dir")
    convert_parser.add_argument("--image-size", type=int, help="build the model at this square resolution")
    convert_parser.add_argument("--verify", action="store_true", help="compare with the source implementation")
    convert_parser.set_defaults(run=convert_command)
    presets_parser = commands.add_parser("presets", help="list the preset catalogue")
    presets_parser.set_defaults(run=presets_command)
    args = parser.parse_args(argv)
    import keras_beit  # noqa: F401  registers the checkpoint formats

    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
