"""Exported models reload for serving and give the same outputs."""

import os

import keras
import numpy as np
import pytest

import keras_beit


def _backbone(**options):
    return keras_beit.BEiTBackbone(
        image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
        intermediate_dim=24, use_relative_position_bias=True, **options,
    )


def _served(model, inputs, path, dynamic_batch=True):
    """The exported model's outputs: a torch.export program or a TensorFlow SavedModel (jax through jax2tf)."""
    if keras.backend.backend() == "torch":
        import torch

        options = {"dynamic_shapes": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else {}
        model.export(f"{path}.pt2", format="torch", verbose=False, **options)
        program = torch.export.load(f"{path}.pt2").module()
        torch_inputs = keras.tree.map_structure(torch.from_numpy, inputs)
        return program(torch_inputs).detach().numpy()
    import tensorflow as tf

    model.export(path, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(path)  # kept alive while serve runs: it owns the variables
    return reloaded.serve(inputs).numpy()


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_exported_task_reloads_and_matches_with_any_batch_size(task, tmp_path):
    if task == "classifier":
        model = keras_beit.BEiTImageClassifier(_backbone(), num_classes=3)
    else:
        backbone = _backbone(out_indices=(0, 1, 1, 1), use_fpn=True)
        model = keras_beit.BEiTImageSegmenter(backbone, num_classes=4, auxiliary_channels=8)
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(_served(model, images, os.path.join(tmp_path, task)), expected, atol=1e-5)


def test_exported_masked_image_modeler_takes_a_mask_per_patch(tmp_path):
    model = keras_beit.BEiTMaskedImageModeler(_backbone(use_mask_token=True), vocabulary_size=7)
    rng = np.random.default_rng(1)
    inputs = {"images": rng.random((1, 16, 16, 3)).astype("float32"), "mask": rng.random((1, 4)) < 0.5}
    expected = keras.ops.convert_to_numpy(model(inputs))
    served = _served(model, inputs, os.path.join(tmp_path, "mim"), dynamic_batch=False)
    np.testing.assert_allclose(served, expected, atol=1e-5)
