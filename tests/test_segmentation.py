"""BEiTImageSegmenter, its feature pyramid and preprocessor, against transformers."""

import types

import keras
import numpy as np
import pytest
import torch
import transformers

import keras_beit
from keras_beit.layers.adaptive_pooling import adaptive_pool_matrix
from transformers_reference import randomize
from transformers_reference import run
from transformers_reference import save_model
from transformers_reference import to_torch

ATOL = 1e-4
SEGMENTATION = dict(
    patch_size=8, num_hidden_layers=4, out_indices=[1, 2, 3, 4], auxiliary_channels=16,
    use_relative_position_bias=True,
)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _images(side, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, side, side, 3)).astype("float32")


def test_adaptive_pool_bins_overlap_like_pytorch():
    # 20 -> 3: [0, 7), [6, 14), [13, 20) (hf_beit.md 2.11).
    matrix = adaptive_pool_matrix(20, 3)
    assert [tuple(np.flatnonzero(row)[[0, -1]]) for row in matrix] == [(0, 6), (6, 13), (13, 19)]
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.arange(400.0).reshape(1, 1, 20, 20), 6)
    layer = keras_beit.layers.AdaptiveAveragePooling2D(6)
    ours = _numpy(layer(np.arange(400.0, dtype="float32").reshape(1, 20, 20, 1)))[0, ..., 0]
    np.testing.assert_allclose(ours, pooled[0, 0].numpy(), atol=1e-4)


@pytest.mark.parametrize("grid", [10, 12], ids=["overlapping_psp_bins", "exact_psp_bins"])
def test_segmentation_logits_match_transformers(grid, tmp_path):
    side = grid * 8
    reference = save_model(transformers.BeitForSemanticSegmentation, tmp_path, image_size=side, **SEGMENTATION)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    images = _images(side)
    expected = _nhwc(run(reference, images).logits)
    logits = _numpy(segmenter(images))
    assert logits.shape == (2, 4 * grid, 4 * grid, 5)  # 4x the patch grid: 1/4 of the input at patch 16
    assert np.abs(logits - expected).max() <= ATOL


def test_auxiliary_logits_and_loss_match_transformers(tmp_path):
    side = 80
    reference = save_model(transformers.BeitForSemanticSegmentation, tmp_path, image_size=side, **SEGMENTATION)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    images = _images(side)
    labels = np.random.default_rng(1).integers(0, 5, size=(2, side, side))
    labels[:, :7] = 255  # ignored pixels
    with torch.no_grad():
        outputs = reference(pixel_values=to_torch(images), labels=torch.from_numpy(labels), output_hidden_states=True)
        maps = [
            outputs.hidden_states[i - 1][:, 1:].transpose(1, 2).reshape(2, -1, 10, 10)
            for i in reference.config.out_indices
        ]
        expected_auxiliary = _nhwc(reference.auxiliary_head(reference.fpn(maps)))
    predictions = segmenter(images, return_auxiliary=True)
    assert np.abs(_numpy(predictions["auxiliary_logits"]) - expected_auxiliary).max() <= ATOL
    loss = segmenter.compute_loss(x=images, y=labels, y_pred=predictions, training=True)
    assert float(_numpy(loss)) == pytest.approx(outputs.loss.item(), abs=1e-4)


def test_default_tap_points_are_the_original_blocks(tmp_path):
    # The official ADE20K config says [3, 5, 7, 11]; the original code taps blocks 3, 5, 7 and 11
    # (0-based), transformers' segmentation model blocks 1, 3, 5 and 9.
    save_model(
        transformers.BeitForSemanticSegmentation, tmp_path, image_size=32,
        **{**SEGMENTATION, "num_hidden_layers": 12, "out_indices": [3, 5, 7, 11]},
    )
    original = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path))
    assert original.backbone.out_indices == (3, 5, 7, 11)
    compatible = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    assert compatible.backbone.out_indices == (1, 3, 5, 9)


def test_original_tap_points_feed_the_block_outputs(tmp_path):
    reference = save_model(transformers.BeitModel, tmp_path, use_relative_position_bias=True)
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path), out_indices=(0, 1))
    images = _images(32)
    hidden_states = run(reference, images, output_hidden_states=True).hidden_states
    maps = keras.Model(backbone.input, backbone.pyramid_outputs)(images)
    for block in (0, 1):
        expected = hidden_states[block + 1][:, 1:].numpy().reshape(2, 4, 4, -1)
        assert np.abs(_numpy(maps[f"stage{block + 1}"]) - expected).max() <= ATOL


@pytest.mark.parametrize("add_fpn", [False, True])
def test_backbone_feature_maps_match_beit_backbone(add_fpn, tmp_path):
    reference = save_model(
        transformers.BeitBackbone, tmp_path, use_relative_position_bias=True, num_hidden_layers=4,
        out_indices=[1, 2, 3, 4], add_fpn=add_fpn, image_size=64,
    )
    backbone = keras_beit.BEiTBackbone.from_preset(str(tmp_path))
    images = _images(64)
    expected = run(reference, images).feature_maps
    ours = keras.Model(backbone.input, list(backbone.pyramid_outputs.values()))(images)
    assert list(backbone.pyramid_outputs) == (["P2", "P3", "P4", "P5"] if add_fpn else ["stage1", "stage2", "stage3", "stage4"])
    for mine, theirs in zip(ours, expected):
        assert _numpy(mine).shape == _nhwc(theirs).shape
        assert np.abs(_numpy(mine) - _nhwc(theirs)).max() <= ATOL


def test_a_segmenter_starts_from_a_classification_checkpoint_with_new_pyramid_and_heads(tmp_path):
    # As BeitForSemanticSegmentation.from_pretrained on a classification or pre-training checkpoint.
    reference = save_model(
        transformers.BeitForImageClassification, tmp_path, num_hidden_layers=4, use_relative_position_bias=True
    )
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), num_classes=6, out_indices=(0, 1, 2, 3))
    images = _images(32)
    expected = run(reference, images, output_hidden_states=True).hidden_states
    _, hidden_states = segmenter.backbone.encode(images)
    for mine, theirs in zip(hidden_states, expected):
        assert np.abs(_numpy(mine) - theirs.numpy()).max() <= ATOL
    assert _numpy(segmenter(images)).shape == (2, 16, 16, 6)  # 4x the 4 x 4 patch grid


def test_a_segmenter_on_a_classification_checkpoint_needs_its_classes_and_known_tap_points(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "deep", num_hidden_layers=12)
    with pytest.raises(ValueError, match="no segmentation head; pass num_classes"):
        keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path / "deep"))
    # The official ADE20K configs tap blocks 3, 5, 7 and 11 of a 12-block encoder.
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path / "deep"), num_classes=6)
    assert tuple(segmenter.backbone.out_indices) == (3, 5, 7, 11)
    save_model(transformers.BeitForImageClassification, tmp_path / "shallow", num_hidden_layers=4)
    message = "4 blocks, a depth with no official segmentation tap points; pass out_indices"
    with pytest.raises(ValueError, match=message):
        keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path / "shallow"), num_classes=6)


def test_data2vec_vision_segmentation_layout_loads(tmp_path):
    config = transformers.Data2VecVisionConfig(
        image_size=80, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=48, num_labels=5, use_relative_position_bias=True, out_indices=[1, 2, 3, 4],
        auxiliary_channels=16, drop_path_rate=0.0,
    )
    reference = randomize(transformers.Data2VecVisionForSemanticSegmentation(config))
    reference.save_pretrained(tmp_path)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path), tap_points="transformers")
    images = _images(80)
    assert np.abs(_numpy(segmenter(images)) - _nhwc(run(reference, images).logits)).max() <= ATOL


def _segmenter(**options):
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=4, num_heads=2,
        intermediate_dim=24, use_relative_position_bias=True, out_indices=(0, 1, 2, 3), use_fpn=True,
    )
    return keras_beit.BEiTImageSegmenter(backbone, num_classes=4, auxiliary_channels=8, **options)


def test_fit_lowers_the_loss_and_the_model_reloads(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    # A learnable target: the class is the quadrant of the image.
    labels = np.zeros((4, 32, 32), "int32")
    labels[:, :16, 16:], labels[:, 16:, :16], labels[:, 16:, 16:] = 1, 2, 3
    labels[:, :2] = 255
    segmenter = _segmenter()
    segmenter.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = segmenter.fit(images, labels, epochs=6, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "mean_iou" in history.history
    segmenter.save(tmp_path / "segmenter.keras")
    reloaded = keras.models.load_model(tmp_path / "segmenter.keras")
    np.testing.assert_allclose(_numpy(reloaded(images)), _numpy(segmenter(images)), atol=1e-5)
    segmenter.save_to_preset(str(tmp_path / "preset"))
    from_preset = keras_beit.BEiTImageSegmenter.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(_numpy(from_preset(images)), _numpy(segmenter(images)), atol=1e-5)


def test_sample_weights_per_image_spread_over_its_pixels():
    # Keras' mean over the whole batch: weights 1, 1, 0, 0 give half the first two images' loss.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 4, size=(4, 32, 32))
    segmenter = _segmenter()
    segmenter.compile()
    logits = segmenter(images)
    weights = np.array([1.0, 1.0, 0.0, 0.0], "float32")
    weighted = segmenter.compute_loss(x=images, y=labels, y_pred=logits, sample_weight=weights, training=False)
    first_two = segmenter.compute_loss(x=images[:2], y=labels[:2], y_pred=logits[:2], training=False)
    assert float(_numpy(weighted)) == pytest.approx(0.5 * float(_numpy(first_two)), rel=1e-5)
    per_pixel = np.broadcast_to(weights[:, None, None], labels.shape)
    by_pixel = segmenter.compute_loss(x=images, y=labels, y_pred=logits, sample_weight=per_pixel, training=False)
    assert float(_numpy(by_pixel)) == pytest.approx(float(_numpy(weighted)), rel=1e-6)


def test_segmentation_labels_out_of_range_are_refused():
    with pytest.raises(Exception, match=r"Labels must be class indices in \[0, 4\) or the ignore index 255"):
        _segmenter().fit(np.zeros((2, 32, 32, 3), "float32"), np.full((2, 32, 32), 7), verbose=0)


def _processor(**kwargs):
    return transformers.BeitImageProcessorPil(
        size={"height": 32, "width": 32}, do_center_crop=False, resample=2, **kwargs
    )


def test_raw_ade20k_labels_are_checked_after_their_reduction():
    # ADE20K's raw maps hold 0 (background) and 1..num_classes.
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(
        keras_beit.BEiTImageConverter(image_size=(32, 32)), reduce_labels=True
    )
    segmenter = _segmenter()
    segmenter.preprocessor = preprocessor
    images = np.zeros((2, 32, 32, 3), "float32")
    raw = np.random.default_rng(0).integers(0, 5, size=(2, 32, 32)).astype("uint8")
    raw[0, 0, 0], raw[1, 0, 0] = 0, 4
    segmenter.compile()
    assert np.isfinite(segmenter.fit(images, raw, verbose=0).history["loss"][0])
    reduced = r"or the ignore index 255, checked after the preprocessor reduce_labels .*: raw labels 0 to 4"
    with pytest.raises(Exception, match=r"Labels must be class indices in \[0, 4\) " + reduced):
        segmenter.fit(images, np.full((2, 32, 32), 5, "uint8"), verbose=0)  # reduced to 4


def test_with_another_ignore_index_a_raw_0_is_refused_after_reduction_and_the_message_says_so():
    # reduce_labels sends 0 to 255, which only an ignore index of 255 lets through.
    segmenter = _segmenter(ignore_index=-100)
    segmenter.preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(
        keras_beit.BEiTImageConverter(image_size=(32, 32)), reduce_labels=True
    )
    segmenter.compile()
    with pytest.raises(Exception, match=r"0 becomes 255\): raw labels 1 to 4"):
        segmenter.fit(np.zeros((2, 32, 32, 3), "float32"), np.zeros((2, 32, 32), "uint8"), verbose=0)


@pytest.mark.parametrize("map_dtype", ["int32", "uint8"])
@pytest.mark.parametrize("reduce_labels", [False, True])
def test_preprocessor_maps_match_beit_image_processor(reduce_labels, map_dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    maps = rng.integers(0, 6, size=(2, 32, 32)).astype("uint8")
    maps[0, 0, :4] = 255
    expected = _processor(do_reduce_labels=reduce_labels)(
        list(images), segmentation_maps=list(maps), return_tensors="np"
    )
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(
        keras_beit.BEiTImageConverter(image_size=(32, 32)), reduce_labels=reduce_labels
    )
    pixels, labels = preprocessor(images.astype("float32"), maps.astype(map_dtype))  # uint8: as read from PNGs
    np.testing.assert_allclose(_numpy(pixels), expected["pixel_values"].transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_array_equal(_numpy(labels), expected["labels"])


def test_preprocessor_resizes_maps_with_nearest_neighbour_only():
    maps = np.random.default_rng(0).integers(0, 4, size=(1, 48, 40)).astype("int32")
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor(keras_beit.BEiTImageConverter(image_size=(32, 32)))
    _, labels = preprocessor(np.zeros((1, 48, 40, 3), "float32"), maps)
    labels = _numpy(labels)
    assert labels.shape == (1, 32, 32)
    assert set(np.unique(labels)) <= set(np.unique(maps))  # no interpolated values


def test_post_process_matches_transformers(tmp_path):
    logits = np.random.default_rng(0).normal(size=(2, 8, 8, 5)).astype("float32")
    processor = _processor()

    class Outputs:
        pass

    outputs = Outputs()
    outputs.logits = torch.from_numpy(logits.transpose(0, 3, 1, 2).copy())
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 20), (30, 20)])
    ours = _numpy(_segmenter().post_process(logits, target_size=(30, 20)))
    assert ours.shape == (2, 30, 20)
    for mine, theirs in zip(ours, expected):
        assert (mine == theirs.numpy()).mean() > 0.999
    np.testing.assert_array_equal(_numpy(_segmenter().post_process(logits)), logits.argmax(-1))


def test_post_process_takes_one_target_size_per_image_as_transformers_does():
    logits = np.random.default_rng(1).normal(size=(2, 8, 8, 5)).astype("float32")
    outputs = types.SimpleNamespace(logits=torch.from_numpy(logits.transpose(0, 3, 1, 2).copy()))
    sizes = [(30, 20), (12, 40)]
    expected = _processor().post_process_semantic_segmentation(outputs, target_sizes=sizes)
    ours = _segmenter().post_process(logits, target_size=sizes)
    assert [tuple(_numpy(mine).shape) for mine in ours] == sizes
    for mine, theirs in zip(ours, expected):
        assert (_numpy(mine) == theirs.numpy()).mean() > 0.999
    with pytest.raises(ValueError, match="target_size lists 1 sizes for a batch of 2 images"):
        _segmenter().post_process(logits, target_size=[(30, 20)])


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (0, 1, 1, 2)], ids=["last_block_tapped", "blocks_after_last_tap"])
def test_every_layer_is_built_once_the_segmenter_is_constructed(out_indices):
    # An unbuilt layer makes Keras' jax predict_on_batch run the whole model
    # eagerly before the compiled call, every call.
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=4, num_heads=2,
        intermediate_dim=32, use_relative_position_bias=True, drop_path_rate=0.1,
        out_indices=out_indices, use_fpn=True,
    )
    segmenter = keras_beit.BEiTImageSegmenter(backbone, num_classes=3, pool_scales=(1, 2, 3, 6))
    unbuilt = [layer.name for layer in segmenter._flatten_layers() if not layer.built]
    assert unbuilt == []
