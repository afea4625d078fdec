"""Trains `beit_tiny_digits`, the small preset keras_beit ships for offline use.

A 4-block BEiT (hidden 64) learns scikit-learn's bundled handwritten digits
(1797 8x8 images, 10 classes; no download) from scratch, upscaled to 32x32
RGB. The split is sklearn's train_test_split(test_size=0.2, random_state=0).
The preset is written to keras_beit/assets/beit_tiny_digits with its test
accuracy in metadata.json.

    KERAS_BACKEND=jax python presets/train_digits.py
"""

import json
import os

import keras
import numpy as np

import keras_beit
from keras_beit.convert.catalogue import write_preset
from keras_beit.training import beit_fine_tuning_optimizer

OUTPUT = os.path.join(os.path.dirname(__file__), "..", "keras_beit", "assets", "beit_tiny_digits")
IMAGE_SIZE = 32


def digits():
    """Digits as uint8-range RGB images of 32 x 32, with the fixed train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.repeat(data.images[..., None] * (255.0 / 16.0), 3, axis=-1).astype("float32")
    images = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (IMAGE_SIZE, IMAGE_SIZE)))
    return train_test_split(images, data.target, test_size=0.2, random_state=0)


def main():
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = digits()
    backbone = keras_beit.BEiTBackbone(
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), patch_size=8, hidden_dim=64, num_layers=4,
        num_heads=4, intermediate_dim=128, use_relative_position_bias=True,
        layer_scale_init_value=0.1, drop_path_rate=0.1, layer_norm_epsilon=1e-6,
    )
    converter = keras_beit.BEiTImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    preprocessor = keras_beit.BEiTImageClassifierPreprocessor(converter)
    classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=10, preprocessor=preprocessor)
    epochs, batch_size = 40, 64
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    classifier.compile(
        optimizer=beit_fine_tuning_optimizer(classifier, steps, learning_rate=2e-3, layer_decay=1.0, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    classifier.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2)
    predictions = np.argmax(keras.ops.convert_to_numpy(classifier.predict(x_test, verbose=0)), -1)
    accuracy = float((predictions == y_test).mean())
    print(f"test accuracy on {len(y_test)} held-out digits: {accuracy:.4f}")
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # no custom optimizer class in the preset
    write_preset(classifier, OUTPUT)
    with open(os.path.join(OUTPUT, "metadata.json")) as f:
        metadata = json.load(f)
    metadata.update(
        {
            "description": "A 4-block BEiT trained from scratch on scikit-learn's handwritten digits (32x32 RGB).",
            "dataset": "sklearn.datasets.load_digits; train_test_split(test_size=0.2, random_state=0)",
            "test_accuracy": round(accuracy, 4),
            "test_examples": int(len(y_test)),
            "labels": [str(d) for d in range(10)],
            "trained_with": f"keras {keras.__version__}, backend {keras.backend.backend()}, presets/train_digits.py",
        }
    )
    with open(os.path.join(OUTPUT, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)


if __name__ == "__main__":
    main()
