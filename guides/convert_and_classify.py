"""Convert a transformers BEiT checkpoint and classify an image with it, offline.

It writes a small BeitForImageClassification checkpoint with random weights in the hub's file
layout (config.json + model.safetensors, exactly what `save_pretrained` writes
for microsoft/beit-*), loads it with `BEiTImageClassifier.from_preset`,
classifies an image, and prints how far keras_beit's logits are from
transformers' own on the same pixels.

    KERAS_BACKEND=jax python guides/convert_and_classify.py [--checkpoint DIR]

With --checkpoint, an existing transformers BEiT directory is used instead.
"""

import argparse
import os
import tempfile

import numpy as np

import keras
import keras_beit


def write_random_checkpoint(directory):
    import torch
    import transformers

    config = transformers.BeitConfig(
        image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, use_relative_position_bias=True, num_labels=10, drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BeitForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    # The official repos' processor: bilinear resize to the model size, no crop, mean = std = 0.5.
    transformers.BeitImageProcessorPil(
        size={"height": 64, "width": 64}, resample=2, do_center_crop=False
    ).save_pretrained(directory)
    return model


def test_image(size):
    """A synthetic RGB image: smooth colour gradients with a bright disc."""
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05).astype("float32")
    image = np.stack([x, y, 0.5 * (1 - x) + 0.5 * disc], -1)
    return (255 * image).astype("uint8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a transformers BEiT directory (default: write a random one)")
    args = parser.parse_args()

    reference = None
    if args.checkpoint is None:
        # The stand-in checkpoint is scratch: it is gone when the guide ends.
        with tempfile.TemporaryDirectory(prefix="beit_checkpoint_") as directory:
            reference = write_random_checkpoint(directory)
            print(f"Wrote a random BeitForImageClassification checkpoint: {sorted(os.listdir(directory))}")
            classifier = keras_beit.BEiTImageClassifier.from_preset(directory)
    else:
        classifier = keras_beit.BEiTImageClassifier.from_preset(args.checkpoint)
    image = test_image(96)[None].astype("float32")
    # predict() runs the preset's preprocessor (resize, rescale, normalize) first.
    logits = keras.ops.convert_to_numpy(classifier.predict(image, verbose=0))[0]
    pixels = keras.ops.convert_to_numpy(classifier.preprocessor(image))
    top = np.argsort(-logits)[:5]
    print(f"backend: {keras.backend.backend()}")
    print("top-5 classes:", ", ".join(f"{i} ({logits[i]:.3f})" for i in top))

    if reference is not None:
        import torch

        with torch.no_grad():
            expected = reference(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).logits[0].numpy()
        error = float(np.abs(logits - expected).max())
        print(f"max |keras_beit - transformers| on the logits: {error:.2e}")
        if error > 1e-4:
            raise SystemExit("FAILED: the converted model does not match transformers.")
        print("OK: the converted model matches transformers.")


if __name__ == "__main__":
    main()
