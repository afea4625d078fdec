"""Converts catalogue checkpoints to keras-hub presets, verifying each against its source.

    python presets/convert_catalogue.py OUTPUT_DIR [NAME ...]      # all entries when no name is given
    python presets/convert_catalogue.py --table                   # the catalogue as presets/README.md shows it

Each NAME is downloaded from its first source (Hugging Face, then timm's hub
copy), converted to OUTPUT_DIR/NAME with `keras-beit convert --verify`
(the source implementation runs on the same input and the max abs
difference must stay under 1e-4), and skipped when OUTPUT_DIR/NAME already
holds a preset. The exit status is the number of entries that failed.
"""

import argparse
import os
import sys

from keras_beit.cli import main as keras_beit_cli
from keras_beit.presets import BUNDLED
from keras_beit.presets import CATALOGUE


def _metrics(entry):
    text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in entry["metrics"].items())
    return text or "—"


def _source(entry):
    sources = entry["sources"]
    handle = sources.get("hf") or sources.get("timm")
    return handle or sources.get("unilm", "—")


def catalogue_table():
    """The markdown table of every catalogue entry (name, task, classes, published metrics, source)."""
    lines = ["| name | task | classes | published | source |", "|---|---|---|---|---|"]
    for name, entry in CATALOGUE.items():
        classes = entry["num_classes"] or (8192 if entry["task"] == "masked_image_modeler" else "—")
        task = entry["task"].replace("_", " ")
        lines.append(f"| `{name}` | {task} | {classes} | {_metrics(entry)} | {_source(entry)} |")
    for name, entry in BUNDLED.items():
        task = entry["task"].replace("_", " ")
        lines.append(
            f"| `{name}` (bundled) | {task} | {entry['num_classes']} | {_metrics(entry)} | "
            "this project, `presets/train_digits.py` |"
        )
    return "\n".join(lines)


def convert_entries(output_dir, names):
    failed = []
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(target, "metadata.json")):
            print(f"{name}: already converted in {target}")
            continue
        try:
            status = keras_beit_cli(["convert", name, target, "--verify"])
        except Exception as error:  # keep going: one unreachable source should not stop the rest
            print(f"{name}: FAILED ({type(error).__name__}: {error})", file=sys.stderr)
            status = 1
        if status:
            failed.append(name)
    print(f"converted {len(names) - len(failed)} of {len(names)}" + (f"; failed: {failed}" if failed else ""))
    return len(failed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?")
    parser.add_argument("names", nargs="*", help="catalogue names (default: all)")
    parser.add_argument("--table", action="store_true", help="print the catalogue table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(catalogue_table())
        return 0
    if not args.output_dir:
        parser.error("OUTPUT_DIR is required unless --table is given")
    unknown = [n for n in args.names if n not in CATALOGUE]
    if unknown:
        parser.error(f"not in the catalogue: {unknown}; `keras-beit presets` lists the names")
    return convert_entries(args.output_dir, args.names or list(CATALOGUE))


if __name__ == "__main__":
    sys.exit(main())
