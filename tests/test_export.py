"""Exported models reload for serving and give the same outputs."""

import os

import keras
import numpy as np

import keras_beit


def test_exported_classifier_reloads_and_matches(tmp_path):
    backbone = keras_beit.BEiTBackbone(
        image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
        intermediate_dim=24, use_relative_position_bias=True,
    )
    classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(classifier(images))
    if keras.backend.backend() == "torch":
        # torch.export: an ExportedProgram (.pt2) with a dynamic batch dimension.
        import torch

        path = os.path.join(tmp_path, "classifier.pt2")
        classifier.export(
            path, format="torch", verbose=False,
            dynamic_shapes={0: torch.export.Dim("batch", min=1, max=1024)},
        )
        served = torch.export.load(path).module()(torch.from_numpy(images)).detach().numpy()
    else:
        # A TensorFlow SavedModel, from tensorflow directly or from jax through jax2tf.
        import tensorflow as tf

        path = os.path.join(tmp_path, "classifier")
        classifier.export(path, format="tf_saved_model", verbose=False)
        reloaded = tf.saved_model.load(path)
        served = reloaded.serve(images).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
