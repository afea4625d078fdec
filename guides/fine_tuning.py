"""# Fine-tuning BEiT with model.fit and layer-wise learning-rate decay

BEiT's fine-tuning recipe scales each block's learning rate by
decay ** (depth - layer): the embeddings barely move, the head learns
fastest. This guide fine-tunes a pretrained backbone with a new head on
scikit-learn's handwritten digits as an "odd or even" task, and saves the
training curve as a PNG.

By default the backbone comes from `beit_base_patch16_224` (hub), resized to
the digits' 32x32; with `--offline`, or when the hub cannot be reached, from
`beit_tiny_digits`, the small BEiT shipped with keras_beit.

    KERAS_BACKEND=jax python guides/fine_tuning.py [--preset P] [--offline] [--epochs N]
"""

import argparse
import os
import tempfile

import keras
import numpy as np

import keras_beit
from guide_utils import OFFLINE_HELP
from guide_utils import load_or_explain
from guide_utils import save_line_chart
from keras_beit.training import beit_fine_tuning_optimizer
from keras_beit.training import layer_decay_scales


def digits_odd_even():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.repeat(data.images[..., None] * (255.0 / 16.0), 3, axis=-1).astype("float32")
    # Held out with a different seed from the digits preset's own split, on purpose: a new task.
    return train_test_split(images, data.target % 2, test_size=0.25, random_state=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="beit_base_patch16_224")
    parser.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--output", default=None, help="where to save the training curve PNG")
    args = parser.parse_args()

    # %% [markdown]
    # ## A pretrained backbone with a new 2-class head
    # Passing `num_classes` keeps the backbone's weights and starts a fresh head.
    preset = "beit_tiny_digits" if args.offline else args.preset
    classifier, used = load_or_explain(
        keras_beit.BEiTImageClassifier, preset, fallback="beit_tiny_digits", num_classes=2
    )
    print(f"Backbone weights used: {used}; new head: 2 classes (odd / even)")
    classifier.preprocessor.image_converter.image_size = classifier.backbone.image_shape[:2]

    # %% [markdown]
    # ## The original recipe in one call
    # AdamW, linear warmup then cosine decay, layer-wise decay 0.75, and no weight
    # decay on biases, norms, layer scales and tokens.
    x_train, x_test, y_train, y_test = digits_odd_even()
    batch_size = 32
    steps = args.epochs * int(np.ceil(len(x_train) / batch_size))
    optimizer = beit_fine_tuning_optimizer(classifier, steps, learning_rate=1e-3, layer_decay=0.75)
    scales = layer_decay_scales(classifier, 0.75)
    print(
        "learning-rate scales: embedding "
        f"{scales['patch_embedding/projection/kernel']:.4f}, block 0 {scales['block_0/fc1/kernel']:.4f}, "
        f"head {scales['predictions/kernel']:.1f}"
    )
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = classifier.fit(
        x_train, y_train, validation_data=(x_test, y_test), epochs=args.epochs, batch_size=batch_size, verbose=2
    )

    # %% [markdown]
    # ## Result and training curve
    accuracy = history.history["val_accuracy"][-1]
    print(f"held-out odd/even accuracy after {args.epochs} epochs: {accuracy:.3f}")
    output = args.output or os.path.join(tempfile.mkdtemp(prefix="beit_fine_tuning_"), "training_curve.png")
    save_line_chart(
        output,
        {"train loss": history.history["loss"], "validation loss": history.history["val_loss"],
         "validation accuracy": history.history["val_accuracy"]},
        f"BEiT fine-tuning (layer decay 0.75) from {used}",
    )
    print(f"training curve saved to {output}")


if __name__ == "__main__":
    main()
