"""Guides run end to end offline and print the result they promise."""

import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_guide(name, *args):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "guides", name), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )


def test_convert_and_classify_matches_transformers():
    result = _run_guide("convert_and_classify.py")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend: {keras.backend.backend()}" in result.stdout
    assert "top-5 classes:" in result.stdout
    assert "OK: the converted model matches transformers." in result.stdout


def test_quickstart_classifies_held_out_digits_with_the_bundled_preset():
    result = _run_guide("quickstart.py", "--offline")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Weights used: beit_tiny_digits" in result.stdout
    assert "image 0: top-5 2 (" in result.stdout  # the first held-out digit is a 2
    accuracy = float(result.stdout.split("accuracy on 20 held-out digits: ")[1].split()[0])
    assert accuracy >= 0.9


def test_bundled_digits_preset_records_its_test_accuracy():
    import json

    from keras_beit.convert.catalogue import bundled_path

    with open(os.path.join(bundled_path("beit_tiny_digits"), "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["test_accuracy"] >= 0.9 and metadata["test_examples"] == 360
    assert "ImageClassifier" in metadata["tasks"]
