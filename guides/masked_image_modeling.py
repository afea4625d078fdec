"""# Masked image modeling: BEiT's pre-training task

BEiT pre-trains by hiding blocks of image patches behind a learned mask
token and predicting the visual tokens those patches would have. This guide
draws BEiT's blockwise masks, runs the masked-image-modeling head, and takes
a few pre-training steps with model.fit.

Visual tokens come from an image tokenizer that is not part of BEiT itself:
the DALL-E dVAE (8192 tokens) for BEiT v1 and DiT, VQ-KD for BEiT v2. Feed
their token ids, shape (batch, patches), as the labels. Here, offline, a
fixed random projection of each patch's pixels stands in for the tokenizer.
The guide's images are noise, so a hidden patch's token cannot be read off
its visible neighbours: the steps show the mechanics (masks, labels, the
loss over masked patches going down as the model learns the token
frequencies), not a meaningful accuracy; that takes real images.

By default the model is `beit_base_patch16_224_pt22k` (hub); with
`--offline` a small model is built from scratch.

    KERAS_BACKEND=jax python guides/masked_image_modeling.py [--preset P] [--offline]
"""

import argparse

import keras
import numpy as np

import keras_beit
from guide_utils import OFFLINE_HELP
from keras_beit.training import BlockwiseMaskGenerator

VOCABULARY = 16


def stand_in_tokens(images, patch_size, vocabulary=VOCABULARY):
    """Token ids from a fixed random projection of each patch: a toy tokenizer."""
    batch, height, width, channels = images.shape
    patches = images.reshape(batch, height // patch_size, patch_size, width // patch_size, patch_size, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, patch_size * patch_size * channels)
    projection = np.random.default_rng(42).normal(size=(patches.shape[-1], vocabulary))
    return (patches @ projection).argmax(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="beit_base_patch16_224_pt22k")
    parser.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    # %% [markdown]
    # ## Blockwise masks
    # BEiT v1 masks 75 of the 196 patches of a 224 image, in blocks of at least 16.
    mask = BlockwiseMaskGenerator((14, 14), num_masked_patches=75, seed=0)()
    print(f"a 14 x 14 mask with {mask.sum()} masked patches (#):")
    for row in mask:
        print("   " + "".join("#" if m else "." for m in row))

    # %% [markdown]
    # ## The model
    if args.offline:
        backbone = keras_beit.BEiTBackbone(
            image_shape=(32, 32, 3), patch_size=4, hidden_dim=64, num_layers=4, num_heads=4,
            intermediate_dim=128, use_shared_relative_position_bias=True, use_mask_token=True,
        )
        model, used = keras_beit.BEiTMaskedImageModeler(backbone, vocabulary_size=VOCABULARY), "a small model built from scratch (--offline)"
    else:
        model, used = keras_beit.BEiTMaskedImageModeler.from_preset(args.preset), args.preset
    print(f"Weights used: {used}")
    backbone = model.backbone
    grid = (backbone.image_shape[0] // backbone.patch_size, backbone.image_shape[1] // backbone.patch_size)
    patches = grid[0] * grid[1]
    generator = BlockwiseMaskGenerator(grid, num_masked_patches=int(0.4 * patches), min_block_patches=4, seed=1)

    # %% [markdown]
    # ## Predictions of the MIM head
    # One distribution over the visual-token vocabulary per patch position.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64,) + tuple(backbone.image_shape)).astype("float32")
    masks = np.stack([generator.mask_for(i).reshape(-1) for i in range(len(images))])
    tokens = stand_in_tokens(images, backbone.patch_size, model.vocabulary_size)
    logits = model.predict({"images": images[:2], "mask": masks[:2]}, verbose=0)
    print(f"MIM logits shape: {tuple(logits.shape)} (batch, patches, vocabulary)")

    # %% [markdown]
    # ## A few pre-training steps
    # The loss and accuracy count masked patches only.
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    epochs = max(1, args.steps // 4)
    history = model.fit({"images": images, "mask": masks}, tokens, batch_size=16, epochs=epochs, verbose=0)
    losses = history.history["loss"]
    print(f"masked-token loss over {epochs * 4} steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"masked-token accuracy: {history.history['sparse_categorical_accuracy'][-1]:.3f}")


if __name__ == "__main__":
    main()
