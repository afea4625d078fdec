"""`keras-beit convert SOURCE OUTPUT_DIR` and `keras-beit presets`."""

import argparse
import os
import sys


def convert_command(args):
    from keras_beit.convert.catalogue import convert

    kwargs = {}
    if args.image_size:
        kwargs["image_shape"] = (args.image_size, args.image_size, 3)
    try:
        convert(args.source, args.output_dir, **kwargs)
    except (OSError, ValueError) as error:
        # A file in no known layout, mismatched keys, an occupied output, no hub access: the message says which.
        print(f"keras-beit convert: {error}", file=sys.stderr)
        return 2
    print(f"Wrote a keras-hub preset to {args.output_dir}: {sorted(os.listdir(args.output_dir))}")
    if args.verify:
        from keras_beit.convert.catalogue import load_source
        from keras_beit.convert.catalogue import source_path
        from keras_beit.convert.verify import max_difference

        if args.image_size:
            # The source runs at its own resolution only; verify the conversion there.
            print("Verifying a conversion at the checkpoint's own resolution.")
            model, _ = load_source(args.source)
        else:
            model, _ = load_source(args.output_dir)
        error, reference = max_difference(source_path(args.source), model)
        print(f"max abs difference against the source implementation ({reference}): {error:.3e}")
        if error > 1e-4:
            print("VERIFY FAILED: more than 1e-4", file=sys.stderr)
            return 1
    return 0


def presets_command(args):
    from keras_beit.presets import BUNDLED
    from keras_beit.presets import CATALOGUE

    for name, entry in {**CATALOGUE, **BUNDLED}.items():
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
