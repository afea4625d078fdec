"""# Switching backends: the same model on TensorFlow, JAX and PyTorch

keras_beit runs unchanged on every Keras backend; the backend is chosen with
the KERAS_BACKEND environment variable before keras is imported. This guide
runs the same preset on the same images once per backend, each in its own
process, and prints the predictions and how far apart the logits are.

    python guides/switching_backends.py [--preset P] [--offline]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")

# %% [markdown]
# ## One backend's run
# A child process imports keras with its backend set, loads the preset and
# prints its logits as JSON.
CHILD = """
import json, sys
import numpy as np
import keras, keras_beit
from sklearn.datasets import load_digits
preset = sys.argv[1]
digits = load_digits()
images = np.repeat(digits.images[:8, ..., None] * (255.0 / 16.0), 3, axis=-1).astype("float32")
classifier = keras_beit.BEiTImageClassifier.from_preset(preset)
logits = keras.ops.convert_to_numpy(classifier.predict(images, verbose=0))
print(json.dumps({"backend": keras.backend.backend(), "logits": logits.tolist()}))
"""


def run_backend(backend, preset):
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", CHILD, preset], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{backend} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="beit_tiny_digits", help="a catalogue name, hf:// handle or local path")
    parser.add_argument("--offline", action="store_true", help="use the bundled beit_tiny_digits preset")
    args = parser.parse_args()
    preset = "beit_tiny_digits" if args.offline else args.preset
    print(f"Weights used: {preset}")

    # %% [markdown]
    # ## Compare
    results = {b: np.asarray(run_backend(b, preset)["logits"]) for b in BACKENDS}
    for backend, logits in results.items():
        print(f"{backend:>10}: predictions {logits.argmax(-1).tolist()}")
    reference = results["tensorflow"]
    for backend in BACKENDS[1:]:
        print(f"max |logits({backend}) - logits(tensorflow)| = {np.abs(results[backend] - reference).max():.2e}")
    same = all((logits.argmax(-1) == reference.argmax(-1)).all() for logits in results.values())
    print("All backends agree." if same else "Backends DISAGREE.")


if __name__ == "__main__":
    main()
