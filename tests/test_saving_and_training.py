"""Models survive saving, and fit() trains them on every backend."""

import keras
import numpy as np
import pytest

import keras_beit
from keras_beit.training import beit_fine_tuning_optimizer

TINY = dict(
    image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
    intermediate_dim=24, use_relative_position_bias=True, use_shared_relative_position_bias=True,
)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.3, size=variable.shape).astype(variable.dtype))


@pytest.fixture
def images():
    return np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")


def _classifier():
    classifier = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    _randomize(classifier)
    return classifier


def _mim():
    backbone = keras_beit.BEiTBackbone(**{**TINY, "use_mask_token": True})
    mim = keras_beit.BEiTMaskedImageModeler(backbone, vocabulary_size=12)
    _randomize(mim)
    return mim


def test_classifier_reloads_identically_from_a_keras_file(images, tmp_path):
    classifier = _classifier()
    classifier.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(reloaded, keras_beit.BEiTImageClassifier)
    np.testing.assert_array_equal(_numpy(reloaded(images)), _numpy(classifier(images)))


def _segmenter():
    backbone = keras_beit.BEiTBackbone(**{**TINY, "use_fpn": True, "out_indices": (0, 1, 1, 1)})
    segmenter = keras_beit.BEiTImageSegmenter(backbone, num_classes=3, auxiliary_channels=8)
    _randomize(segmenter)
    for norm in [v for v in segmenter.weights if v.path.endswith("moving_variance")]:
        norm.assign(np.ones(norm.shape, "float32"))
    return segmenter


def _training_batch(task, images):
    rng = np.random.default_rng(2)
    if isinstance(task, keras_beit.BEiTMaskedImageModeler):
        return {"images": images, "mask": rng.random((4, 16)) < 0.4}, rng.integers(0, 12, size=(4, 16))
    if isinstance(task, keras_beit.BEiTImageSegmenter):
        return images, rng.integers(0, 3, size=(4, 32, 32))
    return images, rng.integers(0, 3, size=4)


def _layer_decay_adamw(task):
    return beit_fine_tuning_optimizer(task, steps=10, learning_rate=1e-3)


@pytest.mark.parametrize(
    "make, optimizer",
    [
        (_classifier, lambda task: keras.optimizers.AdamW(1e-3)),
        (_classifier, _layer_decay_adamw),
        (_mim, lambda task: keras.optimizers.SGD(0.1, momentum=0.9)),
        (_segmenter, lambda task: "auto"),
    ],
    ids=["classifier_adamw", "classifier_layer_decay", "mim_sgd_momentum", "segmenter_default"],
)
def test_training_resumed_from_a_keras_file_takes_the_uninterrupted_step(make, optimizer, images, tmp_path):
    # The optimizer, its schedule and its moments come back with the model.
    task = make()
    task.compile(optimizer=optimizer(task))
    x, y = _training_batch(task, images)
    task.train_on_batch(x, y)
    task.train_on_batch(x, y)
    task.save(tmp_path / "checkpoint.keras")
    resumed = keras.saving.load_model(tmp_path / "checkpoint.keras")
    assert type(resumed.optimizer).__name__ == type(task.optimizer).__name__
    assert int(_numpy(resumed.optimizer.iterations)) == 2
    task.train_on_batch(x, y)
    resumed.train_on_batch(x, y)
    for expected, actual in zip(task.weights, resumed.weights):
        np.testing.assert_allclose(_numpy(actual), _numpy(expected), atol=1e-6, err_msg=expected.path)


def test_a_float32_head_on_a_bfloat16_backbone_stays_float32_after_reloading(tmp_path):
    backbone = keras_beit.BEiTBackbone(**TINY, dtype="bfloat16")
    classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3, head_dtype="float32")
    classifier.save(tmp_path / "classifier.keras")
    reloaded = keras.saving.load_model(tmp_path / "classifier.keras")
    assert reloaded.output_dense.compute_dtype == "float32"
    assert reloaded.pooler.compute_dtype == "float32"
    assert reloaded.backbone.blocks[0].fc1.compute_dtype == "bfloat16"


def test_classifier_reloads_identically_from_a_preset(images, tmp_path):
    classifier = _classifier()
    classifier.save_to_preset(str(tmp_path))
    for cls in (keras_beit.BEiTImageClassifier, __import__("keras_hub").models.ImageClassifier):
        reloaded = cls.from_preset(str(tmp_path))
        assert isinstance(reloaded, keras_beit.BEiTImageClassifier)
        np.testing.assert_array_equal(_numpy(reloaded(images)), _numpy(classifier(images)))
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(_numpy(backbone(images)), _numpy(classifier.backbone(images)))


def test_a_preset_loaded_with_a_new_head_keeps_the_saved_pooler_norm(images, tmp_path):
    classifier = _classifier()
    classifier.save_to_preset(str(tmp_path))
    saved_norm = [_numpy(v) for v in classifier.pooler.norm.weights]
    assert not np.allclose(saved_norm[0], 1.0)  # randomised, so keeping it differs from starting afresh
    for cls in (keras_beit.BEiTImageClassifier, __import__("keras_hub").models.ImageClassifier):
        reloaded = cls.from_preset(str(tmp_path), num_classes=7)
        assert reloaded.num_classes == 7
        for kept, saved in zip(reloaded.pooler.norm.weights, saved_norm):
            np.testing.assert_array_equal(_numpy(kept), saved)


def test_masked_image_modeler_reloads_identically(images, tmp_path):
    mim = _mim()
    x = {"images": images, "mask": np.random.default_rng(2).random((4, 16)) < 0.5}
    expected = _numpy(mim(x))
    mim.save(tmp_path / "mim.keras")
    np.testing.assert_array_equal(_numpy(keras.models.load_model(tmp_path / "mim.keras")(x)), expected)
    mim.save_to_preset(str(tmp_path / "preset"))
    reloaded = keras_beit.BEiTMaskedImageModeler.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(_numpy(reloaded(x)), expected)


def test_a_preset_loads_at_another_resolution(images, tmp_path):
    classifier = _classifier()
    classifier.save_to_preset(str(tmp_path))
    flexible = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path), image_shape=(None, None, 3))
    np.testing.assert_allclose(_numpy(flexible(images)), _numpy(classifier(images)), atol=1e-5)
    assert flexible(np.zeros((1, 48, 40, 3), "float32")).shape == (1, 3)


def test_classifier_compile_defaults_then_fit_lowers_the_loss(images):
    classifier = _classifier()
    labels = np.array([0, 1, 2, 1])
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = classifier.fit(images, labels, epochs=8, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def test_classifier_trains_with_no_compile_arguments(images):
    classifier = _classifier()
    # keras-hub compiles tasks on construction: Adam(5e-5), sparse CE from logits.
    history = classifier.fit(images, np.array([0, 1, 2, 1]), epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_masked_image_modeling_fit_lowers_the_masked_token_loss(images):
    mim = _mim()
    mask = np.random.default_rng(3).random((4, 16)) < 0.5
    tokens = np.random.default_rng(4).integers(0, 12, size=(4, 16))
    mim.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = mim.fit({"images": images, "mask": mask}, tokens, epochs=8, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def _first_image_masked_loss(mim, images):
    """A MIM batch and the mean cross-entropy over its first image's masked patches, in numpy."""
    mask = np.random.default_rng(5).random((4, 16)) < 0.5
    mask[0, 0] = True
    tokens = np.random.default_rng(6).integers(0, 12, size=(4, 16))
    x = {"images": images, "mask": mask}
    logits = _numpy(mim(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    return x, tokens, picked[0][mask[0]].mean()


def test_masked_image_modeling_weights_per_image_spread_over_their_patches(images):
    mim = _mim()
    x, tokens, expected = _first_image_masked_loss(mim, images)
    only_the_first_image = np.array([1.0, 0.0, 0.0, 0.0], "float32")
    loss = mim.compute_loss(x=x, y=tokens, y_pred=mim(x), sample_weight=only_the_first_image)
    assert float(_numpy(loss)) == pytest.approx(expected, rel=1e-5)


def test_masked_image_modeling_takes_weights_per_image_then_per_patch(images):
    # The second weight shape makes TensorFlow retrace the train step without a static rank.
    mim = _mim()
    mim.compile(optimizer=keras.optimizers.SGD(0.0))
    x, tokens, expected = _first_image_masked_loss(mim, images)
    per_image = np.array([1.0, 0.0, 0.0, 0.0], "float32")
    per_patch = np.repeat(per_image[:, None], 16, axis=1)
    for weights in (per_image, per_patch):
        loss = mim.train_on_batch(x, tokens, sample_weight=weights, return_dict=True)["loss"]
        assert loss == pytest.approx(expected, rel=1e-5)


def test_masked_image_modeling_loss_counts_masked_positions_only(images):
    mim = _mim()
    mask = np.zeros((4, 16), bool)
    mask[:, :3] = True
    tokens = np.random.default_rng(4).integers(0, 12, size=(4, 16))
    x = {"images": images, "mask": mask}
    logits = _numpy(mim(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    expected = picked[mask].mean()
    # Changing the labels of unmasked positions must not change the loss.
    other = tokens.copy()
    other[:, 3:] = (other[:, 3:] + 5) % 12
    for labels in (tokens, other):
        loss = mim.compute_loss(x=x, y=labels, y_pred=mim(x), sample_weight=None)
        assert float(_numpy(loss)) == pytest.approx(expected, rel=1e-5)
