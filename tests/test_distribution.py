"""Data and model parallelism with keras.distribution (jax), on 8 virtual CPU devices."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distributed_step.py")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution is implemented for jax only"
)


def _run(mode):
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
    return _run("single")


@pytest.mark.parametrize("mode", ["data", "model"])
def test_distributed_forward_and_training_step_match_one_device(mode, single):
    distributed = _run(mode)
    assert distributed["devices"] == 8
    np.testing.assert_allclose(distributed["logits"], single["logits"], atol=1e-5)
    np.testing.assert_allclose(distributed["query_kernel"], single["query_kernel"], atol=1e-5)
    if mode == "model":
        assert "'model'" in distributed["sharding"]  # the kernel really is split
