"""Building and loading a model hold about its weights, not copies of them.

A safetensors checkpoint stays in its file until each tensor is assigned, so
loading one converts a tensor at a time; one that does not fit is refused
before anything is read. Building a model leaves no weight-sized holes in
the C heap resident.
"""

import os
import subprocess
import sys
import textwrap
import weakref

import keras
import numpy as np
import pytest
import transformers
from transformers_reference import save_model

from keras_beit import BEiTImageClassifier
from keras_beit.convert.checkpoint_io import StoredTensor, read_state_dict
from keras_beit.convert.transformers import backbone_weights, head_weights
from keras_beit.convert.weights import CheckpointMismatchError, assign


@pytest.fixture
def checkpoint(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path)
    return tmp_path


def test_a_safetensors_state_dict_is_read_when_used(checkpoint):
    from safetensors.numpy import load_file

    saved = load_file(os.path.join(checkpoint, "model.safetensors"))
    state = read_state_dict(str(checkpoint))
    key = "beit.encoder.layer.0.intermediate.dense.weight"
    assert isinstance(state[key], StoredTensor)
    assert state[key].shape == (48, 32) and state[key].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(state[key]), saved[key])
    assert sorted(state) == sorted(saved)


def test_a_state_dict_read_from_a_relative_path_is_read_from_the_same_file_after_a_chdir(checkpoint, monkeypatch):
    monkeypatch.chdir(checkpoint.parent)
    state = read_state_dict(checkpoint.name)
    monkeypatch.chdir("/")
    assert np.asarray(state["beit.embeddings.cls_token"]).shape == (1, 1, 32)


def test_bfloat16_tensors_are_stored_as_ml_dtypes_bfloat16(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.tensor([1.5, -2.0, 3.0], dtype=torch.bfloat16)}, os.path.join(tmp_path, "model.safetensors"))
    stored = read_state_dict(str(tmp_path))["w"]
    assert stored.dtype == np.dtype("bfloat16") and stored.shape == (3,)
    np.testing.assert_array_equal(np.asarray(stored).astype("float32"), [1.5, -2.0, 3.0])


def test_a_checkpoint_that_does_not_fit_is_refused_before_any_tensor_is_read(checkpoint):
    model = BEiTImageClassifier.from_preset(str(checkpoint), num_classes=7, load_weights=False)
    state = read_state_dict(str(checkpoint))
    os.remove(os.path.join(checkpoint, "model.safetensors"))  # a read would now fail

    pairs = list(backbone_weights(model.backbone, "beit.")) + list(head_weights(model, "beit."))
    with pytest.raises(CheckpointMismatchError, match=r"Mis-shaped keys \(2\): classifier.weight: checkpoint \(5, 32\)"):
        assign(pairs, state)


def test_loading_a_checkpoint_keeps_one_stored_tensor_alive_at_a_time(checkpoint, monkeypatch):
    alive, most = set(), [0]
    read = StoredTensor.__array__

    def counted(self, dtype=None, copy=None):
        value = read(self, dtype, copy)
        alive.add(id(value))
        most[0] = max(most[0], len(alive))
        weakref.finalize(value, alive.discard, id(value))
        return value

    monkeypatch.setattr(StoredTensor, "__array__", counted)
    model = BEiTImageClassifier.from_preset(str(checkpoint))
    assert most[0] == 1
    assert len(model.weights) > 30


# BEiT-L's width: Keras' torch initializers leave one hole per weight that
# glibc kept resident (1.41x the weights for these twelve blocks, 1.10x now).
_BUILD = textwrap.dedent(
    """
    import keras_beit

    def peak_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    def build(width, layers):
        return keras_beit.BEiTBackbone(
            image_shape=(32, 32, 3), patch_size=16, hidden_dim=width, num_layers=layers,
            num_heads=4, intermediate_dim=4 * width,
        )

    build(64, 1)  # the first build's one-off costs
    before = peak_mb()
    weights_mb = build(1024, 12).count_params() * 4 / 2**20
    print((peak_mb() - before) / weights_mb)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_building_a_model_holds_little_beyond_its_weights():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run([sys.executable, "-c", _BUILD], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    growth = float(result.stdout.split()[-1])
    assert growth < 1.25, f"building took {growth:.2f}x its weights' bytes"
