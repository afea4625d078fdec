"""The building blocks, each against an independent reference."""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_beit.layers import BEiTAttention
from keras_beit.layers import BEiTBlock
from keras_beit.layers import BEiTPatchEmbedding
from keras_beit.layers import BEiTRelativePositionBias
from keras_beit.layers import DropPath
from keras_beit.layers import RelativePositionIndex
from keras_beit.layers import relative_position_index
from keras_beit.layers.interpolation import resize_grid


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("out_size", [(7, 7), (11, 5), (3, 9), (20, 13)])
def test_resize_grid_matches_pytorch_interpolate(method, out_size, rng):
    grid = rng.normal(size=(7, 6, 3)).astype("float32")
    expected = F.interpolate(
        torch.from_numpy(grid).permute(2, 0, 1)[None], size=out_size, mode=method, align_corners=False
    )[0].permute(1, 2, 0).numpy()
    actual = _numpy(resize_grid(keras.ops.convert_to_tensor(grid), *out_size, method))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_relative_position_index_has_unilm_cls_rows():
    # The 4 x 4 grid values published in the transformers notes (hf_beit.md 2.3).
    index = _numpy(relative_position_index(4, 4))
    assert index.shape == (17, 17)
    assert index[0, 0] == 51 and index[0, 1] == 49 and index[1, 0] == 50 and index[1, 1] == 24


def test_relative_position_index_counts_offsets_row_major():
    index = _numpy(relative_position_index(2, 3))
    # Offsets (dy, dx) are shifted by (h - 1, w - 1) = (1, 2) and read row-major
    # in a 3 x 5 grid. Patch (0, 0) looking at patch (1, 2): (-1 + 1) * 5 + (-2 + 2) = 0.
    assert index[1, 1 + 5] == 0
    # Patch (1, 2) looking at patch (0, 0): (1 + 1) * 5 + (2 + 2) = 14, the last offset.
    assert index[1 + 5, 1] == 14
    assert index[0, 0] == 17 and index[0, 3] == 15 and index[3, 0] == 16


def test_relative_position_index_is_the_same_for_grid_sizes_given_as_tensors():
    # A graph with an unknown image size passes the grid as tensors; the index
    # must not depend on how the sizes arrive.
    height, width = keras.ops.convert_to_tensor(4), keras.ops.convert_to_tensor(4)
    index = _numpy(relative_position_index(height, width))
    assert index.shape == (17, 17)
    assert index[0, 0] == 51 and index[0, 1] == 49 and index[1, 0] == 50 and index[1, 1] == 24
    assert index[1, 16] == 0 and index[16, 1] == 48


def test_relative_position_bias_matches_transformers_at_a_new_grid(rng):
    from transformers import BeitConfig
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    reference = BeitRelativePositionBias(BeitConfig(num_attention_heads=3, image_size=32, patch_size=8))
    table = rng.normal(size=tuple(reference.relative_position_bias_table.shape)).astype("float32")
    with torch.no_grad():
        reference.relative_position_bias_table.copy_(torch.from_numpy(table))
        expected = reference((6, 5), interpolate_pos_encoding=False, dim_size=31).numpy()
    layer = BEiTRelativePositionBias(window_size=(4, 4), num_heads=3, patch_size=8)
    layer.build()
    layer.relative_position_bias_table.assign(table)
    actual = _numpy(layer(np.zeros((1, 48, 40, 3), "float32")))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_relative_position_bias_at_its_own_grid_reads_the_table_unchanged(rng):
    layer = BEiTRelativePositionBias(window_size=(3, 3), num_heads=2, patch_size=4)
    layer.build()
    table = rng.normal(size=(28, 2)).astype("float32")
    layer.relative_position_bias_table.assign(table)
    bias = _numpy(layer(np.zeros((1, 12, 12, 3), "float32")))
    index = _numpy(relative_position_index(3, 3))
    np.testing.assert_array_equal(bias[0], np.transpose(table[index], (2, 0, 1)))


def test_relative_position_bias_left_unexpanded_is_its_table_plus_the_shared_one(rng):
    layer = BEiTRelativePositionBias(window_size=(3, 3), num_heads=2, patch_size=4)
    layer.build()
    table = rng.normal(size=(28, 2)).astype("float32")
    shared = rng.normal(size=(28, 2)).astype("float32")
    layer.relative_position_bias_table.assign(table)
    rows = _numpy(layer(np.zeros((1, 12, 12, 3), "float32"), shared_bias=shared, expand=False))
    np.testing.assert_allclose(rows, table + shared, atol=1e-6)


def test_relative_position_index_operation_gives_the_index_of_the_images_grid():
    index = RelativePositionIndex(patch_size=4)(np.zeros((1, 12, 8, 3), "float32"))
    assert keras.backend.standardize_dtype(index.dtype) == "int32"
    np.testing.assert_array_equal(_numpy(index), _numpy(relative_position_index(3, 2)))


def test_block_given_a_table_and_its_index_uses_the_bias_they_spell(rng):
    block = BEiTBlock(8, 2, 16, layer_scale_init_value=0.5)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    rows = rng.normal(size=(6, 2)).astype("float32")
    index = rng.integers(0, 6, size=(5, 5)).astype("int32")
    spelled = np.transpose(rows[index], (2, 0, 1))[None]
    np.testing.assert_allclose(_numpy(block(x, bias=(rows, index))), _numpy(block(x, bias=spelled)), atol=1e-6)


def test_mask_token_replaces_masked_patches_only(rng):
    layer = BEiTPatchEmbedding(8, 4, 3, (2, 2), use_mask_token=True)
    images = rng.normal(size=(1, 8, 8, 3)).astype("float32")
    layer.build(images.shape)
    layer.mask_token.assign(np.full((1, 1, 8), 7.0, "float32"))
    plain = _numpy(layer(images))
    masked = _numpy(layer(images, masked_patches=np.array([[False, True, False, True]])))
    np.testing.assert_array_equal(masked[0, [2, 4]], np.full((2, 8), 7.0))
    np.testing.assert_array_equal(masked[0, [0, 1, 3]], plain[0, [0, 1, 3]])


def test_attention_key_projection_has_no_bias():
    layer = BEiTAttention(16, 4)
    layer.build((None, 5, 16))
    assert layer.key.bias is None and layer.query.bias is not None and layer.value.bias is not None


def test_attention_maps_come_from_the_explicit_path_and_agree_with_the_fused_one(rng):
    layer = BEiTAttention(16, 4)
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    bias = rng.normal(size=(1, 4, 5, 5)).astype("float32")
    fused = _numpy(layer(x, bias=bias))
    explicit, scores = layer(x, bias=bias, return_attention_scores=True)
    np.testing.assert_allclose(_numpy(explicit), fused, atol=1e-5)
    scores = _numpy(scores)
    assert scores.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)


def test_block_without_layer_scale_has_no_lambda_weights():
    block = BEiTBlock(16, 4, 32, layer_scale_init_value=0.0)
    block.build((None, 5, 16))
    assert not any("lambda" in w.path for w in block.weights)
    scaled = BEiTBlock(16, 4, 32, layer_scale_init_value=0.1)
    scaled.build((None, 5, 16))
    assert sorted(w.name for w in scaled.weights if "lambda" in w.name) == ["lambda_1", "lambda_2"]


def test_block_dropout_acts_in_training_only(rng):
    block = BEiTBlock(16, 4, 32, dropout_rate=0.5)
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    inference = _numpy(block(x))
    np.testing.assert_array_equal(_numpy(block(x, training=False)), inference)
    assert np.abs(_numpy(block(x, training=True)) - inference).max() > 1e-3


def test_block_does_not_call_its_inactive_regularisers(rng):
    # Skipped rather than called: an eager layer call costs Python time even when it does nothing.
    block = BEiTBlock(16, 4, 32, dropout_rate=0.0, drop_path_rate=0.0)
    calls = []
    for layer in (block.dropout, block.drop_path):
        layer.call = lambda inputs, training=None, name=layer.name: calls.append(name) or inputs
    block(rng.normal(size=(2, 5, 16)).astype("float32"), training=True)
    assert calls == []


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    layer = DropPath(0.5, seed=1)
    x = np.ones((64, 3, 2), "float32")
    out = _numpy(layer(x, training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    np.testing.assert_array_equal(_numpy(layer(x, training=False)), x)


def test_stochastic_depth_rises_linearly_across_blocks():
    from keras_beit import BEiTBackbone

    backbone = BEiTBackbone(
        image_shape=(16, 16, 3), patch_size=8, hidden_dim=8, num_layers=5, num_heads=2,
        intermediate_dim=8, drop_path_rate=0.2,
    )
    assert [b.drop_path_rate for b in backbone.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_layers_survive_a_config_round_trip():
    for layer in (
        BEiTAttention(16, 4, dropout_rate=0.1),
        BEiTBlock(16, 4, 32, layer_scale_init_value=0.0, drop_path_rate=0.1, layer_norm_epsilon=1e-6),
        BEiTPatchEmbedding(8, 4, 3, (2, 3), use_mask_token=True, use_absolute_position_embeddings=True),
        BEiTRelativePositionBias((3, 4), 2, 16),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
