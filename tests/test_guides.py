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
