"""# Converting checkpoints to keras-hub presets

keras_beit reads the official BEiT checkpoint layouts and writes keras-hub
presets (config, weights, preprocessor, metadata) that load with
`from_preset` on any backend. This guide writes a small checkpoint in each
supported layout, converts it with `keras-beit convert`'s function, loads
the preset back, and prints the largest difference from the source
implementation's own output.

The official files convert the same way, e.g.
`keras-beit convert hf://microsoft/beit-base-patch16-224 ./beit_base --verify`.

    KERAS_BACKEND=jax python guides/converting_checkpoints.py [--offline]
"""

import argparse
import os
import tempfile

import keras
import numpy as np
import torch
import transformers

import keras_beit
from guide_utils import OFFLINE_HELP
from keras_beit.convert.catalogue import convert

TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, drop_path_rate=0.0, num_labels=5,
)


def randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


# %% [markdown]
# ## The layouts
# Each entry writes a checkpoint and returns the reference model that wrote it.


def transformers_safetensors(directory):
    config = transformers.BeitConfig(use_relative_position_bias=True, **TINY)
    model = randomized(transformers.BeitForImageClassification(config))
    model.save_pretrained(directory)
    return model


def transformers_pickle(directory):
    model = transformers_safetensors(directory)
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
    os.remove(os.path.join(directory, "model.safetensors"))
    return model


def dit_absolute_positions(directory):
    config = transformers.BeitConfig(use_absolute_position_embeddings=True, **TINY)
    model = randomized(transformers.BeitForImageClassification(config))
    model.save_pretrained(directory)
    return model


def data2vec_vision(directory):
    config = transformers.Data2VecVisionConfig(use_relative_position_bias=True, **TINY)
    model = randomized(transformers.Data2VecVisionForImageClassification(config))
    model.save_pretrained(directory)
    return model


LAYOUTS = {
    "transformers BEiT (model.safetensors)": transformers_safetensors,
    "transformers BEiT (pytorch_model.bin, read with weights_only)": transformers_pickle,
    "DiT (absolute position embeddings)": dit_absolute_positions,
    "data2vec-vision": data2vec_vision,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help=OFFLINE_HELP + " (this guide is always offline)")
    parser.parse_args()
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    with tempfile.TemporaryDirectory(prefix="beit_conversions_") as root:
        worst = 0.0
        for index, (name, write) in enumerate(LAYOUTS.items()):
            source = os.path.join(root, f"source_{index}")
            os.makedirs(source)
            reference = write(source)
            # %% [markdown]
            # ## Convert, then load the preset back
            preset = convert(source, os.path.join(root, f"preset_{index}"))
            classifier = keras_beit.BEiTImageClassifier.from_preset(preset)
            with torch.no_grad():
                expected = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits.numpy()
            error = float(np.abs(keras.ops.convert_to_numpy(classifier(images)) - expected).max())
            worst = max(worst, error)
            print(f"{name}: preset {sorted(os.listdir(preset))}, max |difference| {error:.2e}")
    print(f"All {len(LAYOUTS)} layouts converted; largest difference {worst:.2e}.")


if __name__ == "__main__":
    main()
