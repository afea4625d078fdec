"""Original BEiT ADE20K (mmseg UPerNet) `.pth` checkpoints load and reproduce the reference.

The file is written from a tiny random BeitForSemanticSegmentation (every
parameter and BatchNorm statistic randomised, LayerNorm epsilon 1e-6)
through the inverse of transformers' conversion (tests/original_checkpoints.py
`to_mmseg`), as mmcv saves it: `{"state_dict": ..., "meta": {...}}` with the
training config text in meta. The original taps the outputs of blocks
`out_indices` (0-based); transformers' segmentation model taps
hidden_states[i - 1], so the reference is built with out_indices [2, 3, 4, 5]
to tap blocks 0..3, and the file's config says out_indices=[0, 1, 2, 3].
"""

import keras
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import keras_beit
from keras_beit.convert.mmseg import mmseg_loader
from keras_beit.convert.weights import CheckpointMismatchError
from original_checkpoints import save_mmseg
from original_checkpoints import to_mmseg
from transformers_reference import run
from transformers_reference import save_model
from transformers_reference import to_torch

ATOL = 1e-4
SIDE, GRID = 80, 10  # patch 8; a 10x10 grid gives overlapping PSP bins
REFERENCE = dict(
    image_size=SIDE, patch_size=8, num_hidden_layers=5, out_indices=[2, 3, 4, 5], auxiliary_channels=16,
    use_relative_position_bias=True, layer_norm_eps=1e-6,
)
MMSEG_CONFIG = (
    "model = dict(type='EncoderDecoder', backbone=dict(type='BEiT', out_indices=[0, 1, 2, 3]), "
    "decode_head=dict(type='UPerHead', pool_scales=(1, 2, 3, 6), num_classes=5))"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mmseg")
    reference = save_model(transformers.BeitForSemanticSegmentation, directory / "hf", **REFERENCE)
    state = to_mmseg(load_file(directory / "hf" / "model.safetensors"))
    meta = {"config": MMSEG_CONFIG, "CLASSES": tuple("abcde"), "PALETTE": [[1, 2, 3]] * 5, "iter": 160000}
    path = save_mmseg(state, directory / "beit_tiny_patch8_80_pt22k_ft22ktoade20k.pth", meta)
    return reference, state, path


def _images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, SIDE, SIDE, 3)).astype("float32")


def _nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def _error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - expected)))


def _reference_pyramid(reference, images):
    with torch.no_grad():
        hidden = reference.beit(to_torch(images), output_hidden_states=True).hidden_states
        maps = [hidden[i - 1][:, 1:].transpose(1, 2).reshape(2, -1, GRID, GRID) for i in reference.config.out_indices]
        return [_nhwc(m) for m in reference.fpn(maps)]


def test_ade20k_checkpoint_gives_the_segmentation_logits(checkpoint):
    reference, _, path = checkpoint
    images = _images()
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(path)
    assert _error(segmenter(images), _nhwc(run(reference, images).logits)) <= ATOL


def test_ade20k_checkpoint_loads_channels_first_under_that_default(checkpoint):
    reference, _, path = checkpoint
    images = _images()
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        segmenter = keras_beit.BEiTImageSegmenter.from_preset(path)
        logits = segmenter(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    finally:
        keras.config.set_image_data_format(previous)
    assert segmenter.backbone.image_shape == (3, SIDE, SIDE)
    assert _error(logits, run(reference, images).logits.numpy()) <= ATOL


def test_ade20k_checkpoint_gives_the_auxiliary_logits(checkpoint):
    reference, _, path = checkpoint
    images = _images()
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(path)
    with torch.no_grad():
        third_level = torch.from_numpy(_reference_pyramid(reference, images)[2].transpose(0, 3, 1, 2))
        expected = _nhwc(reference.auxiliary_head([None, None, third_level]))
    assert _error(segmenter(images, return_auxiliary=True)["auxiliary_logits"], expected) <= ATOL


def test_backbone_loads_the_encoder_and_feature_pyramid(checkpoint):
    reference, _, path = checkpoint
    images = _images(seed=1)
    backbone = keras_beit.BEiTBackbone.from_preset(path)
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    for level, expected in zip(("P2", "P3", "P4", "P5"), _reference_pyramid(reference, images)):
        assert _error(pyramid[level], expected) <= ATOL


def test_new_head_starts_from_the_checkpoint_encoder(checkpoint):
    reference, _, path = checkpoint
    images = _images(seed=2)
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(path, num_classes=3)
    assert segmenter(images).shape == (2, 4 * GRID, 4 * GRID, 3)
    pyramid = keras.Model(segmenter.backbone.inputs, segmenter.backbone.pyramid_outputs)(images)
    assert _error(pyramid["P2"], _reference_pyramid(reference, images)[0]) <= ATOL


def test_preprocessing_is_the_mmseg_pipeline(checkpoint):
    _, _, path = checkpoint
    preprocessor = keras_beit.BEiTImageSegmenterPreprocessor.from_preset(path)
    converter = preprocessor.image_converter
    assert tuple(converter.image_size) == (SIDE, SIDE)
    assert converter.interpolation == "bilinear"
    # mmseg's img_norm_cfg, on the 0-255 scale: mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375].
    white = keras.ops.convert_to_numpy(converter(np.full((1, SIDE, SIDE, 3), 255.0, "float32")))
    np.testing.assert_allclose(white[0, 0, 0], [131.325 / 58.395, 138.72 / 57.12, 151.47 / 57.375], rtol=1e-5)
    assert preprocessor.reduce_labels  # ADE20K's reduce_zero_label


def test_tapped_blocks_default_to_the_official_config_for_the_depth(checkpoint, tmp_path):
    _, state, _ = checkpoint
    block = {k[len("backbone.blocks.0."):]: v for k, v in state.items() if k.startswith("backbone.blocks.0.")}
    deep = {k: v for k, v in state.items() if not k.startswith("backbone.blocks.")}
    deep.update({f"backbone.blocks.{i}.{name}": v for i in range(12) for name, v in block.items()})
    loader = mmseg_loader(save_mmseg(deep, tmp_path / "no_config.pth", meta={}))
    assert loader.backbone_config["out_indices"] == (3, 5, 7, 11)


def test_without_a_config_or_an_official_depth_the_taps_come_from_out_indices(checkpoint, tmp_path):
    reference, state, _ = checkpoint
    path = save_mmseg(state, tmp_path / "no_config.pth", meta={})  # 5 blocks: no official taps
    with pytest.raises(ValueError, match="has 5 blocks and no training config.*pass out_indices"):
        keras_beit.BEiTImageSegmenter.from_preset(path)
    # The taps the fixture's training config names (MMSEG_CONFIG), now given by hand.
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(path, out_indices=(0, 1, 2, 3))
    images = _images()
    expected = run(reference, images).logits.numpy().transpose(0, 2, 3, 1)
    assert _error(segmenter(images), expected) <= ATOL


def test_missing_head_weights_are_named(checkpoint, tmp_path):
    _, state, _ = checkpoint
    broken = {k: v for k, v in state.items() if not k.startswith("decode_head.fpn_bottleneck.conv.")}
    path = save_mmseg(broken, tmp_path / "broken.pth", meta={"config": MMSEG_CONFIG})
    with pytest.raises(CheckpointMismatchError, match=r"Missing keys \(1\): decode_head\.fpn_bottleneck\.conv\.weight"):
        keras_beit.BEiTImageSegmenter.from_preset(path)
