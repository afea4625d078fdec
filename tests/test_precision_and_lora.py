"""Mixed precision, LoRA fine-tuning and int8 quantization."""

import keras
import numpy as np
import pytest

import keras_beit

TINY = dict(
    image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
    intermediate_dim=24, use_relative_position_bias=True,
)


@pytest.fixture
def mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 16, 16, 3)).astype("float32"), rng.integers(0, 3, size=8)


def test_mixed_bfloat16_trains_and_predicts_close_to_float32(mixed_bfloat16):
    images, labels = _data()
    classifier = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    assert classifier.backbone.blocks[0].fc1.compute_dtype == "bfloat16"
    assert classifier.backbone.blocks[0].fc1.kernel.dtype == "float32"
    weights = classifier.get_weights()
    low = keras.ops.convert_to_numpy(keras.ops.cast(classifier.predict(images, verbose=0), "float32"))
    keras.config.set_dtype_policy("float32")
    reference = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    reference.set_weights(weights)
    full = keras.ops.convert_to_numpy(reference.predict(images, verbose=0))
    np.testing.assert_allclose(low, full, atol=0.1)
    keras.config.set_dtype_policy("mixed_bfloat16")
    history = classifier.fit(images, labels, epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_attention_softmax_runs_in_float32_under_mixed_precision(mixed_bfloat16):
    layer = keras_beit.layers.BEiTAttention(16, 2)
    _, scores = layer(np.random.default_rng(0).normal(size=(1, 5, 16)).astype("float32"), return_attention_scores=True)
    assert layer.softmax.compute_dtype == "float32"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(scores, "float32")).sum(-1), 1.0, atol=2e-2
    )


def _attention_inputs():
    rng = np.random.default_rng(1)
    return rng.normal(size=(2, 5, 16)).astype("float32"), rng.normal(size=(1, 4, 5, 5)).astype("float32")


def test_mixed_precision_inference_takes_the_fused_attention_op(mixed_bfloat16, monkeypatch):
    # The fused op is the fast path on every backend; half precision must not fall back to the explicit one.
    calls = []
    fused = keras.ops.dot_product_attention
    monkeypatch.setattr(keras.ops, "dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    layer = keras_beit.layers.BEiTAttention(16, 4)
    layer(*_attention_inputs())
    assert calls == [1]


def test_mixed_precision_attention_matches_float64_arithmetic(mixed_bfloat16):
    x, bias = _attention_inputs()
    layer = keras_beit.layers.BEiTAttention(16, 4)
    out = keras.ops.convert_to_numpy(keras.ops.cast(layer(x, bias=bias), "float32"))
    w = {v.path.split("/")[-2] + "/" + v.name: keras.ops.convert_to_numpy(v).astype("float64") for v in layer.weights}
    heads = lambda t: t.reshape(2, 5, 4, 4).transpose(0, 2, 1, 3)
    q = heads(x @ w["query/kernel"] + w["query/bias"])
    k = heads(x @ w["key/kernel"])
    v = heads(x @ w["value/kernel"] + w["value/bias"])
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(16 / 4) + bias  # scaled by sqrt(head_dim)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = (probs @ v).transpose(0, 2, 1, 3).reshape(2, 5, 16)
    expected = attended @ w["output_dense/kernel"] + w["output_dense/bias"]
    # bfloat16 keeps 8 significant bits: a few roundings along the way stay within 3% of the output's scale.
    np.testing.assert_allclose(out, expected, atol=0.03 * np.abs(expected).max())


def test_lora_reaches_query_and_value_and_trains_only_lora_and_head():
    images, labels = _data()
    classifier = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    classifier.backbone.enable_lora(4)
    trainable = {v.path for v in classifier.trainable_variables}
    lora = {p for p in trainable if "lora" in p}
    assert {p.split("/")[-2] for p in lora} == {"query", "value"}
    assert len(lora) == 2 * 2 * 2  # two blocks, query and value, A and B
    assert trainable - lora == {"predictions/kernel", "predictions/bias", "pooler/norm/gamma", "pooler/norm/beta"}
    frozen_before = [keras.ops.convert_to_numpy(v) for v in classifier.backbone.non_trainable_variables]
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    classifier.fit(images, labels, epochs=2, batch_size=4, verbose=0)
    for before, after in zip(frozen_before, classifier.backbone.non_trainable_variables):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))


@pytest.mark.parametrize(
    "options",
    [
        {},
        # Recomputing a random draw would give the backward pass other masks.
        dict(drop_path_rate=0.3, dropout_rate=0.2),
        dict(drop_path_rate=0.3, attention_dropout_rate=0.2),
        # No bias tensor reaches the blocks (DiT's layout).
        dict(use_relative_position_bias=False, use_absolute_position_embeddings=True),
    ],
    ids=["relative_bias", "dropout_and_drop_path", "attention_dropout", "absolute_positions"],
)
def test_gradient_checkpointing_gives_the_same_training_step(options):
    images, labels = _data()
    results = []
    for checkpointing in (False, True):
        keras.utils.set_random_seed(0)
        backbone = keras_beit.BEiTBackbone(**{**TINY, **options}, gradient_checkpointing=checkpointing)
        classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
        if results:
            classifier.set_weights(results[0][0])
        start = classifier.get_weights()
        classifier.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
        classifier.train_on_batch(images, labels)
        results.append((start, classifier.get_weights()))
    for plain, recomputed in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-4, atol=1e-4)


def test_mixed_float16_trains_and_predicts():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        images, labels = _data()
        classifier = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
        assert classifier.backbone.blocks[0].fc1.compute_dtype == "float16"
        predictions = keras.ops.convert_to_numpy(classifier.predict(images, verbose=0))
        assert np.isfinite(predictions.astype("float32")).all()
        history = classifier.fit(images, labels, epochs=2, batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_preset_saved_under_mixed_bfloat16_loads_in_the_current_policy(mixed_bfloat16, tmp_path):
    images, _ = _data()
    classifier = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    classifier.save_to_preset(str(tmp_path))
    weights = classifier.get_weights()  # float32 variables under a mixed policy
    keras.config.set_dtype_policy("float32")
    reference = keras_beit.BEiTImageClassifier(keras_beit.BEiTBackbone(**TINY), num_classes=3)
    reference.set_weights(weights)
    for cls in (keras_beit.BEiTImageClassifier, __import__("keras_hub").models.ImageClassifier):
        reloaded = cls.from_preset(str(tmp_path))
        assert reloaded.backbone.blocks[0].fc1.compute_dtype == "float32"
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(reloaded.predict(images, verbose=0)),
            keras.ops.convert_to_numpy(reference.predict(images, verbose=0)),
            atol=1e-5,
        )


def _outputs(model, inputs):
    return keras.ops.convert_to_numpy(model(inputs))


def test_a_quantized_backbone_preset_reloads_quantized_through_either_entry_point(tmp_path):
    backbone = keras_beit.BEiTBackbone(**TINY)
    backbone.quantize("int8")
    backbone.save_to_preset(str(tmp_path))
    images, _ = _data()
    for cls in (keras_beit.BEiTBackbone, __import__("keras_hub").models.Backbone):
        reloaded = cls.from_preset(str(tmp_path))
        assert reloaded.blocks[0].fc1.quantization_mode == "int8"
        np.testing.assert_array_equal(_outputs(reloaded, images), _outputs(backbone, images))


def test_quantizing_a_classifier_quantizes_its_backbone_and_it_reloads(tmp_path):
    converter = keras_beit.BEiTImageConverter(image_size=(16, 16))
    classifier = keras_beit.BEiTImageClassifier(
        keras_beit.BEiTBackbone(**TINY), num_classes=3, preprocessor=keras_beit.BEiTImageClassifierPreprocessor(converter)
    )
    classifier.quantize("int8")  # the preprocessor's unbuilt layers are not walked
    assert classifier.backbone.blocks[0].attention.query.quantization_mode == "int8"
    assert classifier.output_dense.quantization_mode is None  # keras-hub rebuilds heads in float
    images, _ = _data()
    classifier.save(tmp_path / "classifier.keras")
    reloaded = keras.saving.load_model(tmp_path / "classifier.keras")
    np.testing.assert_array_equal(_outputs(reloaded, images), _outputs(classifier, images))


def test_a_quantized_masked_image_modeler_preset_reloads(tmp_path):
    mim = keras_beit.BEiTMaskedImageModeler(keras_beit.BEiTBackbone(**TINY, use_mask_token=True), vocabulary_size=7)
    mim.quantize("int8")
    mim.save_to_preset(str(tmp_path))
    reloaded = keras_beit.BEiTMaskedImageModeler.from_preset(str(tmp_path))
    images, _ = _data()
    inputs = {"images": images, "mask": np.random.default_rng(1).random((8, 4)) < 0.5}
    assert reloaded.backbone.blocks[1].fc2.quantization_mode == "int8"
    np.testing.assert_array_equal(_outputs(reloaded, inputs), _outputs(mim, inputs))
