"""The original BEiT training recipes: layer-wise lr decay and blockwise masking."""

import keras
import numpy as np
import pytest

import keras_beit
from keras_beit.training import BlockwiseMaskGenerator
from keras_beit.training import beit_fine_tuning_optimizer
from keras_beit.training import layer_decay_scales
from keras_beit.training import no_weight_decay_variables
from keras_beit.training import with_layer_decay


def _classifier(num_layers=12):
    backbone = keras_beit.BEiTBackbone(
        image_shape=(16, 16, 3), patch_size=8, hidden_dim=8, num_layers=num_layers, num_heads=2,
        intermediate_dim=8, use_relative_position_bias=True, use_shared_relative_position_bias=True,
    )
    return keras_beit.BEiTImageClassifier(backbone, num_classes=3)


def test_layer_decay_scales_match_the_original_table_for_12_layers():
    # original_and_timm.md 1.5: decay 0.65, L = 12.
    scales = layer_decay_scales(_classifier(), 0.65)
    assert scales["patch_embedding/cls_token"] == pytest.approx(0.0036972, rel=1e-4)
    assert scales["patch_embedding/projection/kernel"] == pytest.approx(0.0036972, rel=1e-4)
    assert scales["block_0/attention/query/kernel"] == pytest.approx(0.0056880, rel=1e-4)
    assert scales["relative_position_bias_0/relative_position_bias_table"] == pytest.approx(0.0056880, rel=1e-4)
    assert scales["block_11/fc2/kernel"] == pytest.approx(0.65)
    assert scales["shared_relative_position_bias/relative_position_bias_table"] == 1.0
    assert scales["predictions/kernel"] == 1.0 and scales["pooler/norm/gamma"] == 1.0


def test_weight_decay_excludes_biases_norms_layer_scales_and_tokens():
    excluded = {v.path for v in no_weight_decay_variables(_classifier(2))}
    assert "block_0/attention/query/bias" in excluded
    assert "block_0/norm_before/gamma" in excluded and "block_1/lambda_2" in excluded
    assert "patch_embedding/cls_token" in excluded
    assert "block_0/attention/query/kernel" not in excluded
    assert "relative_position_bias_0/relative_position_bias_table" not in excluded


def test_a_fit_step_moves_each_layer_by_its_scale(tmp_path):
    # With SGD (no momentum) the step is lr * gradient, so a layer-decayed step is
    # exactly scale times the plain step, layer by layer.
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0])
    plain, decayed = _classifier(4), _classifier(4)
    decayed.set_weights(plain.get_weights())
    start = {v.path: keras.ops.convert_to_numpy(v) for v in plain.trainable_variables}
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    decayed.compile(
        optimizer=with_layer_decay(keras.optimizers.SGD(0.1), decayed, 0.5),
        loss="sparse_categorical_crossentropy",
    )
    plain.train_on_batch(images, labels)
    decayed.train_on_batch(images, labels)
    scales = layer_decay_scales(decayed, 0.5)
    after_plain = {v.path: keras.ops.convert_to_numpy(v) for v in plain.trainable_variables}
    for v in decayed.trainable_variables:
        expected = start[v.path] + scales[v.path] * (after_plain[v.path] - start[v.path])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), expected, atol=1e-6)
    assert scales["patch_embedding/projection/kernel"] == 0.5**5


def test_layer_decay_refuses_an_optimizer_that_averages_inside_apply():
    # Keras' EMA would follow the unscaled steps and then replace the weights with them.
    with pytest.raises(ValueError, match="does not support use_ema=True"):
        with_layer_decay(keras.optimizers.AdamW(1e-3, use_ema=True), _classifier(num_layers=2), 0.65)


def test_fine_tuning_recipe_trains_a_tiny_classifier():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=48)
    # Each class is a colour: an easy, real signal.
    images = rng.normal(scale=0.3, size=(48, 16, 16, 3)).astype("float32")
    images[np.arange(48), :, :, labels] += 1.5
    classifier = _classifier(2)
    classifier.compile(
        optimizer=beit_fine_tuning_optimizer(classifier, steps=60, learning_rate=3e-3, layer_decay=0.75),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = classifier.fit(images, labels, epochs=10, batch_size=8, verbose=0)
    assert history.history["accuracy"][-1] >= 0.9


def test_blockwise_masks_have_the_requested_count_in_blocks():
    generator = BlockwiseMaskGenerator(seed=0)
    for _ in range(20):
        mask = generator()
        assert mask.shape == (14, 14)
        # Blocks are placed until 75 patches are masked; the last may stop just short.
        assert 70 <= mask.sum() <= 75
    # Masked patches come in blocks: most have a masked neighbour.
    mask = generator()
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neighbours[mask]).mean() > 0.9


def test_blockwise_masks_are_deterministic_under_a_seed():
    first, second, other = (BlockwiseMaskGenerator(seed=s).batch(4) for s in (7, 7, 8))
    assert first.shape == (4, 196) and first.dtype == bool
    np.testing.assert_array_equal(first, second)
    assert (first != other).any()
    assert (BlockwiseMaskGenerator(seed=3).mask_for(5) == BlockwiseMaskGenerator(seed=3).mask_for(5)).all()


def test_unseeded_generators_draw_different_per_sample_masks():
    # Only a seed makes mask_for reproducible; without one each generator differs, as its own rng does.
    first, second = BlockwiseMaskGenerator(seed=None), BlockwiseMaskGenerator(seed=None)
    assert any((first.mask_for(i) != second.mask_for(i)).any() for i in range(4))
    seeded = BlockwiseMaskGenerator(seed=3)
    np.testing.assert_array_equal(seeded.mask_for(2), BlockwiseMaskGenerator(seed=3).mask_for(2))


def test_masks_feed_masked_image_modeling_in_a_tf_data_pipeline():
    import tensorflow as tf

    generator = BlockwiseMaskGenerator((2, 2), num_masked_patches=2, min_block_patches=1, seed=0)
    backbone = keras_beit.BEiTBackbone(
        image_shape=(16, 16, 3), patch_size=8, hidden_dim=8, num_layers=1, num_heads=2,
        intermediate_dim=8, use_shared_relative_position_bias=True, use_mask_token=True,
    )
    mim = keras_beit.BEiTMaskedImageModeler(backbone, vocabulary_size=5)
    masks = np.stack([generator.mask_for(i).reshape(-1) for i in range(8)])
    images = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    tokens = np.random.default_rng(1).integers(0, 5, size=(8, 4))
    ds = tf.data.Dataset.from_tensor_slices(({"images": images, "mask": masks}, tokens)).batch(4)
    history = mim.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_every_keras_optimizer_has_a_layer_decay_class_registered_on_import():
    # A fresh process that loads a saved model must find them by name.
    for name in ("SGD", "Adam", "AdamW", "Lion", "Adafactor"):
        assert keras.saving.get_registered_object(f"keras_beit>LayerDecay{name}") is not None, name
