"""# Quickstart: classify images with a BEiT preset

Load a classifier preset, classify images and print the top-5 labels.

By default this loads the official BEiT-B/16 ImageNet-1k weights
(`beit_base_patch16_224`, converted from the Hugging Face hub on first use).
With `--offline`, or when the hub cannot be reached, it uses
`beit_tiny_digits`, a small BEiT this project trained on scikit-learn's
handwritten digits and ships inside the package, and classifies held-out
digits. It always prints which weights it used.

    KERAS_BACKEND=jax python guides/quickstart.py [--preset NAME_OR_PATH] [--offline]
"""

import argparse

import keras
import numpy as np

import keras_beit
from guide_utils import OFFLINE_HELP
from guide_utils import load_or_explain
from keras_beit.presets import BUNDLED
from keras_beit.presets import CATALOGUE

DIGITS = "beit_tiny_digits"

# %% [markdown]
# ## Images to classify
# The digits preset is evaluated on scikit-learn's bundled digits (the same
# held-out split it was trained without); other presets get a synthetic photo-like
# image so that the guide needs no download.


def held_out_digits(count):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.repeat(data.images[..., None] * (255.0 / 16.0), 3, axis=-1).astype("float32")
    _, x_test, _, y_test = train_test_split(images, data.target, test_size=0.2, random_state=0)
    return x_test[:count], y_test[:count]


def synthetic_image(size=224):
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08).astype("float32")
    return (255 * np.stack([0.2 + 0.6 * disc, 0.5 * y, 0.8 * (1 - disc) * x], -1))[None].astype("float32")


def label_names(preset):
    entry = {**CATALOGUE, **BUNDLED}.get(preset, {})
    labels = entry.get("labels")
    return labels if isinstance(labels, (list, tuple)) else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="beit_base_patch16_224")
    parser.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    args = parser.parse_args()

    # %% [markdown]
    # ## Load the classifier
    # `from_preset` accepts a catalogue name, an `hf://` handle, a transformers or
    # timm directory, a `.pth` file, or a keras-hub preset directory.
    preset = DIGITS if args.offline else args.preset
    classifier, used = load_or_explain(keras_beit.BEiTImageClassifier, preset, fallback=DIGITS)
    print(f"Weights used: {used} ({({**CATALOGUE, **BUNDLED}.get(used) or {}).get('description', 'a local preset')})")
    print(f"Backend: {keras.backend.backend()}")

    # %% [markdown]
    # ## Classify
    # `predict` runs the preset's preprocessor (resize, rescale, normalize) first.
    if used == DIGITS:
        images, truth = held_out_digits(20)
    else:
        images, truth = synthetic_image(), None
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(classifier.predict(images, verbose=0)))
    names = label_names(used)
    for i, row in enumerate(probabilities[:5]):
        top5 = np.argsort(-row)[:5]
        shown = ", ".join(f"{names[k] if names else k} ({row[k]:.2f})" for k in top5)
        print(f"image {i}: top-5 {shown}" + (f"   true: {truth[i]}" if truth is not None else ""))
    if truth is not None:
        accuracy = float((probabilities.argmax(-1) == truth).mean())
        print(f"accuracy on {len(truth)} held-out digits: {accuracy:.2f}")


if __name__ == "__main__":
    main()
