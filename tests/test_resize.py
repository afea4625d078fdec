"""Position tables resized once on load (keras_beit.convert.resize).

Each method is checked against an independent computation: the original
unilm algorithm written out step by step with SciPy, PyTorch's
F.interpolate, numpy's own linear interpolation, exact cubic polynomials and
the ratios published in original_and_timm.md 1.4. Then loading at a new
resolution is checked end to end on the current backend.
"""

import json
import os

import keras
import numpy as np
import pytest
import torch
import transformers
from scipy.interpolate import RectBivariateSpline
from scipy.interpolate import bisplev

import keras_beit
from keras_beit.convert import resize
from original_checkpoints import original_state
from original_checkpoints import save_pth
from transformers_reference import run
from transformers_reference import save_model


def _table(window, heads, seed=0):
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) + 3
    return np.random.default_rng(seed).normal(size=(rows, heads)).astype("float32")


def unilm_cubic_resize(table, src_size, dst_size):
    """`beit/run_class_finetuning.py`'s resize of a table with square sides src_size -> dst_size.

    Written out as the unilm code does it. `interp2d(x, y, z, kind="cubic")`
    no longer exists; for a rectangular grid it fitted
    `regrid_smth(x, y, z.T, kx=3, ky=3, s=0)` and evaluated `bisplev(dx, dy).T`
    (SciPy < 1.14, `_interpolate.py`), which RectBivariateSpline(x, y, z.T)
    and bisplev do here in the same argument order.
    """
    extra_tokens, offsets = table[-3:], table[:-3]

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_progression(1, q, src_size // 2) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-d for d in reversed(dis)]
    x = y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = dy = np.arange(-t, t + 0.1, 1.0)
    columns = []
    for head in range(table.shape[1]):
        z = offsets[:, head].reshape(src_size, src_size).astype("float32")
        spline = RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)
        f_dx_dy = bisplev(dx, dy, (*spline.tck, 3, 3)).T
        columns.append(f_dx_dy.reshape(-1, 1))
    return np.concatenate([np.concatenate(columns, axis=1).astype("float32"), extra_tokens])


@pytest.mark.parametrize(
    "src_side, dst_side, ratio, edge",
    [(27, 47, 1.090307, 22.99993), (27, 63, 1.134918, 31.00018), (27, 79, 1.168504, 39.00008), (47, 79, 1.045131, None)],
    ids=["224to384", "224to512", "224to640", "384to640"],
)
def test_geometric_ratio_matches_the_published_values(src_side, dst_side, ratio, edge):
    assert resize.geometric_ratio(src_side, dst_side) == pytest.approx(ratio, abs=2e-6)
    source, target = resize.geometric_coordinates(src_side, dst_side)
    assert len(source) == src_side and len(target) == dst_side
    np.testing.assert_array_equal(target, np.arange(-(dst_side // 2), dst_side // 2 + 1))
    if edge is not None:
        assert source[-1] == pytest.approx(edge, abs=1e-5)


@pytest.mark.parametrize("src, dst", [(14, 24), (14, 32), (4, 6)], ids=["224to384", "224to512", "tiny"])
def test_geometric_resize_is_the_original_algorithm(src, dst):
    table = _table((src, src), heads=3)
    ours = resize.resize_relative_position_table(table, (src, src), (dst, dst), "geometric")
    expected = unilm_cubic_resize(table, 2 * src - 1, 2 * dst - 1)
    assert ours.shape == expected.shape == ((2 * dst - 1) ** 2 + 3, 3)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ours[-3:], table[-3:])  # CLS rows kept as they are


def test_geometric_resize_reproduces_a_cubic_polynomial_exactly():
    """A bicubic spline through the points reproduces any cubic polynomial, here in (dy, dx)."""
    src, dst = (14, 14), (24, 24)
    source, target = resize.geometric_coordinates(27, 47)

    def surface(yy, xx):
        return 0.3 + 0.02 * yy - 0.001 * yy**2 + 2e-4 * yy**3 + 0.05 * xx * yy - 3e-4 * xx**3

    grid_y, grid_x = np.meshgrid(source, source, indexing="ij")
    table = np.concatenate([surface(grid_y, grid_x).reshape(-1, 1), np.full((3, 1), 7.0)]).astype("float64")
    ours = resize.resize_relative_position_table(table, src, dst, "geometric")
    # Targets past the outermost source offset are clamped to it, as FITPACK does.
    clamped = np.clip(target, source[0], source[-1])
    target_y, target_x = np.meshgrid(clamped, clamped, indexing="ij")
    np.testing.assert_allclose(ours[:-3, 0], surface(target_y, target_x).reshape(-1), atol=1e-9)
    np.testing.assert_array_equal(ours[-3:, 0], 7.0)


def test_geometric_resize_handles_each_axis_of_a_non_square_grid():
    table = _table((4, 6), heads=2)
    ours = resize.resize_relative_position_table(table, (4, 6), (6, 5), "geometric")
    assert ours.shape == (11 * 9 + 3, 2)
    # Along each axis the original's 1-D coordinates; a separable check on one head.
    y, dy = resize.geometric_coordinates(7, 11)
    x, dx = resize.geometric_coordinates(11, 9)
    z = table[:-3, 0].reshape(7, 11).astype("float64")
    expected = RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)(dy, dx)
    np.testing.assert_allclose(ours[:-3, 0].reshape(11, 9), expected, atol=1e-5)


def test_geometric_linear_is_piecewise_linear_on_the_geometric_grid():
    table = _table((4, 4), heads=2, seed=1)
    ours = resize.resize_relative_position_table(table, (4, 4), (7, 7), "geometric_linear")
    source, target = resize.geometric_coordinates(7, 13)
    for head in range(2):
        z = table[:-3, head].reshape(7, 7).astype("float64")
        # Separable linear interpolation with numpy (np.interp clamps at the ends, as timm does).
        rows = np.stack([np.interp(target, source, z[:, j]) for j in range(7)], axis=1)
        expected = np.stack([np.interp(target, source, rows[i]) for i in range(13)], axis=0)
        np.testing.assert_allclose(ours[:-3, head].reshape(13, 13), expected, atol=1e-6)
    np.testing.assert_array_equal(ours[-3:], table[-3:])


@pytest.mark.parametrize("src, dst", [((4, 4), (6, 5)), ((4, 4), (3, 3))], ids=["up", "down"])
def test_bilinear_resize_matches_torch_interpolate(src, dst):
    table = _table(src, heads=3, seed=2)
    ours = resize.resize_relative_position_table(table, src, dst, "bilinear")
    rows, cols = 2 * src[0] - 1, 2 * src[1] - 1
    grid = torch.from_numpy(table[:-3].reshape(rows, cols, 3)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(
        grid, size=(2 * dst[0] - 1, 2 * dst[1] - 1), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    np.testing.assert_allclose(ours[:-3], expected, atol=1e-6)
    np.testing.assert_array_equal(ours[-3:], table[-3:])


def test_absolute_positions_match_torch_bicubic():
    positions = np.random.default_rng(3).normal(size=(1, 1 + 16, 8)).astype("float32")
    ours = resize.resize_position_embeddings(positions, (4, 4), (6, 5))
    grid = torch.from_numpy(positions[0, 1:].reshape(4, 4, 8)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False)
    expected = expected[0].permute(1, 2, 0).reshape(1, 30, 8).numpy()
    assert ours.shape == (1, 31, 8)
    np.testing.assert_array_equal(ours[:, :1], positions[:, :1])
    np.testing.assert_allclose(ours[:, 1:], expected, atol=1e-5)


@pytest.mark.parametrize("dst", [(6, 5), (3, 2)], ids=["up", "down"])
def test_antialiased_absolute_positions_match_torch_as_timm_resizes(dst):
    positions = np.random.default_rng(4).normal(size=(1, 1 + 16, 8)).astype("float32")
    ours = resize.resize_position_embeddings(positions, (4, 4), dst, antialias=True)
    grid = torch.from_numpy(positions[0, 1:].reshape(4, 4, 8)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=dst, mode="bicubic", align_corners=False, antialias=True)
    expected = expected[0].permute(1, 2, 0).reshape(1, dst[0] * dst[1], 8).numpy()
    np.testing.assert_array_equal(ours[:, :1], positions[:, :1])
    np.testing.assert_allclose(ours[:, 1:], expected, atol=1e-5)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="position_resize must be one of"):
        resize.resize_relative_position_table(_table((4, 4), 1), (4, 4), (5, 5), "nearest")


# === Loading at a new resolution ===

TINY_ORIGINAL = dict(layer_norm_eps=1e-6, use_relative_position_bias=True)


def _images(height, width, seed=0):
    return np.random.default_rng(seed).normal(size=(1, height, width, 3)).astype("float32")


def test_unilm_file_at_a_new_resolution_gets_the_original_geometric_tables(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **TINY_ORIGINAL)
    state = original_state(tmp_path / "hf")
    path = save_pth(state, tmp_path / "finetuned.pth")
    classifier = keras_beit.BEiTImageClassifier.from_preset(path, image_shape=(48, 48, 3))
    assert classifier.backbone.window_size == (6, 6)
    for i, bias in enumerate(classifier.backbone.relative_position_biases):
        expected = unilm_cubic_resize(state[f"blocks.{i}.attn.relative_position_bias_table"], 7, 11)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bias.relative_position_bias_table), expected, atol=1e-5)
    logits = keras.ops.convert_to_numpy(classifier(_images(48, 48)))
    assert logits.shape == (1, 5) and np.all(np.isfinite(logits))
    # The original evaluation crop at 48: the shorter side to int(48 / (224 / 256)) = 54, then 48.
    converter = classifier.preprocessor.image_converter
    assert (converter.image_size, converter.crop_size) == ((54, 54), (48, 48))


def test_bilinear_load_time_resize_equals_transformers_at_that_size(tmp_path):
    """transformers interpolates its tables bilinearly for a new size: the same numbers, resized once."""
    reference = save_model(transformers.BeitForImageClassification, tmp_path / "hf", **TINY_ORIGINAL)
    path = save_pth(original_state(tmp_path / "hf"), tmp_path / "finetuned.pth")
    images = _images(48, 40, seed=1)
    expected = run(reference, images).logits.numpy()
    for source in (path, str(tmp_path / "hf")):  # the unilm file and the transformers directory itself
        classifier = keras_beit.BEiTImageClassifier.from_preset(
            source, image_shape=(48, 40, 3), position_resize="bilinear"
        )
        assert classifier.backbone.window_size == (6, 5)
        assert np.abs(keras.ops.convert_to_numpy(classifier(images)) - expected).max() <= 1e-4


def test_dit_absolute_positions_are_resized_bicubic_on_load(tmp_path):
    reference = save_model(
        transformers.BeitModel, tmp_path / "hf", layer_norm_eps=1e-6, use_absolute_position_embeddings=True,
        hidden_size=64, num_attention_heads=1, intermediate_size=32,
    )
    path = save_pth(original_state(tmp_path / "hf"), tmp_path / "dit.pth")
    backbone = keras_beit.BEiTBackbone.from_preset(path, image_shape=(40, 48, 3))
    assert backbone.window_size == (5, 6)
    assert tuple(backbone.patch_embedding.position_embeddings.shape) == (1, 31, 64)
    images = _images(40, 48, seed=2)
    expected = run(reference, images).last_hidden_state.numpy()
    assert np.abs(keras.ops.convert_to_numpy(backbone(images)) - expected).max() <= 1e-4


def test_without_a_method_or_a_static_size_the_tables_stay_at_the_checkpoint_grid(tmp_path):
    save_model(transformers.BeitModel, tmp_path / "hf", **TINY_ORIGINAL)
    path = save_pth(original_state(tmp_path / "hf"), tmp_path / "model.pth")
    kept = keras_beit.BEiTBackbone.from_preset(path, image_shape=(48, 48, 3), position_resize=None)
    flexible = keras_beit.BEiTBackbone.from_preset(path, image_shape=(None, None, 3))
    for backbone in (kept, flexible):
        assert backbone.window_size == (4, 4)
        assert tuple(backbone.relative_position_biases[0].relative_position_bias_table.shape) == (52, 4)
    assert tuple(kept(_images(48, 48)).shape) == (1, 37, 32)
    with pytest.raises(ValueError, match="position_resize must be one of"):
        keras_beit.BEiTBackbone.from_preset(path, image_shape=(48, 48, 3), position_resize="cubic")


def test_position_resize_on_a_keras_hub_preset_says_where_it_applies(tmp_path):
    # A saved preset resizes its tables at call time; the keyword must not vanish into keras.Model.
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=16,
        use_relative_position_bias=True,
    )
    backbone.save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match="position_resize applies when a checkpoint is converted on load"):
        keras_beit.BEiTBackbone.from_preset(str(tmp_path), image_shape=(48, 48, 3), position_resize="geometric")


def _write_processor(directory, **config):
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "BeitImageProcessor", "do_normalize": True, "image_mean": [0.5] * 3,
                   "image_std": [0.5] * 3, "resample": 2, **config}, f)


def test_a_new_size_gives_the_image_converter_that_size_too(tmp_path):
    """predict() takes images of any size; the converter must resize to the size the model was built for."""
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **TINY_ORIGINAL)
    _write_processor(tmp_path / "hf", do_resize=True, size={"height": 32, "width": 32}, do_center_crop=False)
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path / "hf"), image_shape=(48, 40, 3))
    images = np.random.default_rng(5).integers(0, 256, size=(2, 61, 53, 3)).astype("uint8")
    processor = transformers.BeitImageProcessorPil(size={"height": 48, "width": 40}, resample=2, do_center_crop=False)
    expected = processor(list(images), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    ours = keras.ops.convert_to_numpy(classifier.preprocessor.image_converter(images))
    assert np.abs(ours - expected).max() <= 0.0079  # one 8-bit level after (x / 255 - 0.5) / 0.5
    assert classifier.predict(images, verbose=0).shape == (2, 5)


def test_a_new_size_keeps_the_processors_resize_to_crop_ratio(tmp_path):
    save_model(transformers.BeitForImageClassification, tmp_path / "hf", **TINY_ORIGINAL)
    # Resize to 40 then crop 32 (as 256 -> 224); at 48 that is resize to 60 then crop 48.
    _write_processor(
        tmp_path / "hf", do_resize=True, size={"height": 40, "width": 40},
        do_center_crop=True, crop_size={"height": 32, "width": 32},
    )
    converter = keras_beit.BEiTImageClassifier.from_preset(
        str(tmp_path / "hf"), image_shape=(48, 48, 3)
    ).preprocessor.image_converter
    assert converter.image_size == (60, 60) and tuple(converter.crop_size) == (48, 48)
