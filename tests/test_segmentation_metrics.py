"""BEiTMeanIoU: Keras' mean IoU, counted without a per-pixel Python loop."""

import keras
import numpy as np
import pytest

import keras_beit


def _logits_for(classes, num_classes):
    return np.eye(num_classes, dtype="float32")[classes] * 5.0


def test_mean_iou_of_a_hand_counted_example():
    # Class 0: 1 pixel in both, 2 in the union -> 1/2. Class 1: 2 in both, 3 in the union -> 2/3.
    # The third class is never seen and Keras leaves it out of the mean.
    metric = keras_beit.BEiTMeanIoU(3, sparse_y_pred=False)
    metric.update_state(np.array([[0, 0, 1, 1]]), _logits_for(np.array([[0, 1, 1, 1]]), 3))
    assert float(metric.result()) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_it_takes_keras_metric_name_so_history_keys_do_not_change():
    assert keras_beit.BEiTMeanIoU(3).name == keras.metrics.MeanIoU(3).name
    assert keras_beit.BEiTMeanIoU(3, name="miou").name == "miou"
    assert keras_beit.BEiTMeanIoU(3, "miou", "float32").dtype == "float32"  # Keras' positional order


def test_mean_iou_equals_keras_with_ignored_out_of_range_and_weighted_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(3, 16, 12))
    labels[0, :3] = 255  # ignored
    labels[1, :2] = 7  # out of range: counts for nothing in Keras either
    logits = rng.normal(size=(3, 16, 12, 5)).astype("float32")
    weights = rng.uniform(0, 2, size=(3, 16, 12)).astype("float32")
    for sample_weight in (None, weights):
        ours = keras_beit.BEiTMeanIoU(5, ignore_class=255, sparse_y_pred=False)
        keras_metric = keras.metrics.MeanIoU(5, ignore_class=255, sparse_y_pred=False)
        for metric in (ours, keras_metric):
            metric.update_state(labels[:2], logits[:2], sample_weight=None if sample_weight is None else weights[:2])
            metric.update_state(labels[2:], logits[2:], sample_weight=None if sample_weight is None else weights[2:])
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours.total_cm), keras.ops.convert_to_numpy(keras_metric.total_cm), rtol=1e-5
        )
        assert float(ours.result()) == pytest.approx(float(keras_metric.result()), rel=1e-5)


def test_segmenter_reports_keras_mean_iou_without_going_through_scatter(monkeypatch):
    # keras.ops.scatter is a Python loop over every index on torch: one
    # iteration per pixel of every training batch.
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 4, size=(2, 32, 32)).astype("int32")
    labels[:, :3] = 255
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=4, num_heads=2,
        intermediate_dim=32, use_relative_position_bias=True, out_indices=(0, 1, 2, 3), use_fpn=True,
    )
    segmenter = keras_beit.BEiTImageSegmenter(backbone, num_classes=4, auxiliary_channels=8)
    segmenter.preprocessor = None
    segmenter.compile()
    predicted = keras.ops.convert_to_numpy(segmenter.post_process(segmenter.predict(images, verbose=0), (32, 32)))
    expected = keras.metrics.MeanIoU(4, ignore_class=255)
    expected.update_state(labels, predicted)

    def refuse(*args, **kwargs):
        raise AssertionError("ops.scatter was called")

    monkeypatch.setattr(keras.src.ops, "scatter", refuse)
    results = segmenter.evaluate(images, labels, batch_size=2, verbose=0, return_dict=True)
    assert results["mean_iou"] == pytest.approx(float(expected.result()), abs=1e-6)
