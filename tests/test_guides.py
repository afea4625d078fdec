"""Guides run end to end offline and print the result they promise."""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_guide(name, *args, scratch=None):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "guides", name), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )


def _left_behind(scratch):
    # Only the guides' own names: TensorFlow's autograph writes its own files there.
    return sorted(name for name in os.listdir(scratch) if name.startswith("beit_"))


def test_convert_and_classify_matches_transformers_and_removes_its_checkpoint(tmp_path):
    result = _run_guide("convert_and_classify.py", scratch=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend: {keras.backend.backend()}" in result.stdout
    assert "top-5 classes:" in result.stdout
    assert "OK: the converted model matches transformers." in result.stdout
    assert _left_behind(tmp_path) == []


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


def _png_size(path):
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


def test_semantic_segmentation_guide_saves_an_overlay_that_finds_the_shapes():
    result = _run_guide("semantic_segmentation.py", "--offline")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Weights used: a small segmenter trained on generated scenes" in result.stdout
    accuracy = float(result.stdout.split("pixel accuracy against the generated labels: ")[1].split()[0])
    assert accuracy >= 0.9
    path = result.stdout.split("overlay saved to ")[1].split()[0]
    assert path.endswith("scene_overlay.png") and os.path.exists(path.replace("_overlay", ""))
    assert _png_size(path) == ("PNG", (128, 64))  # input and overlay side by side


def test_fine_tuning_guide_learns_odd_and_even_and_plots_the_curve(tmp_path):
    curve = str(tmp_path / "curve.png")
    result = _run_guide("fine_tuning.py", "--offline", "--epochs", "2", "--output", curve)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Backbone weights used: beit_tiny_digits" in result.stdout
    accuracy = float(result.stdout.split("held-out odd/even accuracy after 2 epochs: ")[1].split()[0])
    assert accuracy >= 0.9
    assert _png_size(curve)[0] == "PNG"


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs all three backends itself; once is enough")
def test_switching_backends_guide_gets_the_same_predictions_everywhere():
    result = _run_guide("switching_backends.py", "--offline")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All backends agree." in result.stdout
    for backend in ("jax", "torch"):
        line = result.stdout.split(f"max |logits({backend}) - logits(tensorflow)| = ")[1].split()[0]
        assert float(line) <= 1e-4


def test_converting_guide_round_trips_every_layout_and_removes_its_files(tmp_path):
    result = _run_guide("converting_checkpoints.py", scratch=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    worst = float(result.stdout.split("largest difference ")[1].rstrip(".\n").split()[0].rstrip("."))
    assert "All 4 layouts converted" in result.stdout and worst <= 1e-4
    assert _left_behind(tmp_path) == []


def test_masked_image_modeling_guide_lowers_the_masked_token_loss():
    result = _run_guide("masked_image_modeling.py", "--offline")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MIM logits shape: (2, 64, 16)" in result.stdout
    first, last = result.stdout.split("masked-token loss over ")[1].split(": ")[1].split(" -> ")
    assert float(last.split()[0]) < float(first)
