"""Training under tf.distribute.MirroredStrategy, on two logical CPUs, equals one device."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_step.py")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute belongs to the tensorflow backend"
)


def _run(mode):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs():
    return _run("single"), _run("mirrored")


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_a_mirrored_training_step_equals_one_device(task, runs):
    single, mirrored = runs
    assert mirrored["replicas"] == 2
    # The reported loss is the batch's, not the sum over replicas.
    assert mirrored[task]["loss"] == pytest.approx(single[task]["loss"], rel=1e-5)
    # Each replica's BatchNorm moves its running variance by its own n / (n - 1), as PyTorch's
    # DistributedDataParallel does without SyncBatchNorm; every other weight takes one device's step.
    for path, expected in single[task]["weights"].items():
        if not path.endswith("moving_variance"):
            np.testing.assert_allclose(mirrored[task]["weights"][path], expected, atol=1e-5, err_msg=path)
