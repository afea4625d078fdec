"""Segmentation head layers against the transformers BEiT modules they port.

Each layer is compared with its transformers counterpart (BeitFPNNeck,
BeitUperHead, BeitFCNHead, nn.AdaptiveAvgPool2d) in eval mode, after every
torch parameter and BatchNorm running statistic has been randomised and
copied across: Keras works channels-last, transformers channels-first.
"""

import keras
import numpy as np
import pytest
import torch
import transformers
from transformers.models.beit import modeling_beit

from keras_beit.layers.adaptive_pooling import AdaptiveAveragePooling2D
from keras_beit.layers.adaptive_pooling import adaptive_pool_matrix
from keras_beit.layers.fpn import BEiTFPNNeck
from keras_beit.layers.upernet import BEiTFCNHead
from keras_beit.layers.upernet import BEiTUperNetHead
from keras_beit.layers.upernet import ConvBNReLU

ATOL = 1e-4
HIDDEN = 32
NUM_CLASSES = 5


# === Helpers ===


def beit_config(**overrides):
    settings = dict(
        hidden_size=HIDDEN,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=NUM_CLASSES,
        auxiliary_channels=16,
        pool_scales=[1, 2, 3, 6],
    )
    return transformers.BeitConfig(**{**settings, **overrides})


def randomised(module, seed=0):
    """Every parameter and BatchNorm running statistic redrawn, module in eval mode.

    Kernels are scaled by fan-in to keep activations of order one; running
    variances are positive and away from one, so a wrong eps or a skipped
    statistic shows up well above the tolerance.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std, mean=0.0):
        tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator))

    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.ConvTranspose2d):  # (in, out, 2, 2), stride 2: one tap per input channel
                normal(sub.weight, sub.weight.shape[0] ** -0.5)
            elif isinstance(sub, torch.nn.Conv2d):  # (out, in, kh, kw)
                normal(sub.weight, sub.weight[0].numel() ** -0.5)
            elif isinstance(sub, torch.nn.BatchNorm2d):
                normal(sub.weight, 0.3, mean=1.0)
                normal(sub.bias, 0.2)
                normal(sub.running_mean, 0.5)
                sub.running_var.copy_(0.5 + 1.5 * torch.rand(sub.running_var.shape, generator=generator))
                continue
            else:
                continue
            if sub.bias is not None:
                normal(sub.bias, 0.2)
    return module.eval()


def copy_conv(layer, conv):
    """Conv2d (out, in, kh, kw) and ConvTranspose2d (in, out, kh, kw) both go to Keras by transpose(2, 3, 1, 0)."""
    layer.kernel.assign(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert layer.use_bias == (conv.bias is not None)
    if conv.bias is not None:
        layer.bias.assign(conv.bias.detach().numpy())


def copy_batch_norm(layer, norm):
    assert layer.epsilon == norm.eps and layer.momentum == pytest.approx(1.0 - norm.momentum)
    layer.gamma.assign(norm.weight.detach().numpy())
    layer.beta.assign(norm.bias.detach().numpy())
    layer.moving_mean.assign(norm.running_mean.numpy())
    layer.moving_variance.assign(norm.running_var.numpy())


def copy_conv_module(block, conv_layer):
    """transformers' BeitConvLayer (convolution, normalization) onto a ConvBNReLU (conv, norm)."""
    copy_conv(block.conv, conv_layer.convolution)
    copy_batch_norm(block.norm, conv_layer.normalization)


def random_maps(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, h, w, HIDDEN)).astype("float32") for h, w in shapes]


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def max_error(ours, expected):
    ours = keras.ops.convert_to_numpy(ours)
    assert ours.shape == expected.shape
    error = float(np.abs(ours - expected).max())
    print(f"max abs error {error:.2e} ({keras.backend.backend()})")
    return error


def pyramid(grid):
    """Level sizes the FPN neck gives for a (gh, gw) patch grid: x4, x2, x1, x1/2 (floored)."""
    gh, gw = grid
    return [(4 * gh, 4 * gw), (2 * gh, 2 * gw), (gh, gw), (gh // 2, gw // 2)]


def round_trips(layer, inputs):
    """get_config/from_config and Keras (de)serialisation give the same layer and, with its weights, the same output."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    expected = keras.tree.map_structure(keras.ops.convert_to_numpy, layer(inputs))
    for copy in (clone, revived):
        copy(inputs)
        copy.set_weights(layer.get_weights())
        keras.tree.map_structure(
            np.testing.assert_array_equal, keras.tree.map_structure(keras.ops.convert_to_numpy, copy(inputs)), expected
        )


# === Adaptive average pooling ===


@pytest.mark.parametrize(
    "in_size, out_sizes",
    [(20, (1, 2, 3, 6)), (10, (3, 6)), (16, (3, 6)), (12, (1, 2, 3, 6))],
    ids=["20_overlapping", "10_overlapping", "16_overlapping", "12_exact"],
)
def test_adaptive_pooling_matches_torch_adaptive_avg_pool2d(in_size, out_sizes):
    x = np.random.default_rng(in_size).normal(size=(2, in_size, in_size, 3)).astype("float32")
    for out_size in out_sizes:
        expected = nhwc(torch.nn.functional.adaptive_avg_pool2d(nchw(x), out_size))
        assert max_error(AdaptiveAveragePooling2D(out_size)(x), expected) <= 1e-6


def test_adaptive_pooling_bins_start_at_floor_and_end_at_ceil():
    def bins(in_size, out_size):
        rows = [np.flatnonzero(row) for row in adaptive_pool_matrix(in_size, out_size)]
        return [(int(row[0]), int(row[-1]) + 1) for row in rows]

    # hf_beit.md 2.11: neighbouring bins share a row or column when out does not divide in.
    assert bins(20, 3) == [(0, 7), (6, 14), (13, 20)]
    assert bins(20, 6) == [(0, 4), (3, 7), (6, 10), (10, 14), (13, 17), (16, 20)]
    assert bins(16, 3) == [(0, 6), (5, 11), (10, 16)]
    assert bins(12, 6) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    np.testing.assert_allclose(adaptive_pool_matrix(20, 6).sum(axis=1), 1.0, rtol=1e-6)


def test_adaptive_pooling_takes_a_height_width_pair_on_a_non_square_map():
    x = np.random.default_rng(1).normal(size=(2, 7, 10, 4)).astype("float32")
    layer = AdaptiveAveragePooling2D((3, 4))
    expected = nhwc(torch.nn.functional.adaptive_avg_pool2d(nchw(x), (3, 4)))
    assert layer.compute_output_shape(x.shape) == (2, 3, 4, 4)
    assert max_error(layer(x), expected) <= 1e-6


def test_adaptive_pooling_round_trips():
    x = np.random.default_rng(2).normal(size=(1, 10, 10, 2)).astype("float32")
    round_trips(AdaptiveAveragePooling2D(6, name="pool"), x)
    round_trips(AdaptiveAveragePooling2D((2, 3), name="pool"), x)


# === FPN neck ===


def neck_with_transformers_weights(reference, maps):
    neck = BEiTFPNNeck(HIDDEN)
    neck.build([m.shape for m in maps])
    copy_conv(neck.fpn1_conv1, reference.fpn1.conv_transpose1)
    copy_batch_norm(neck.fpn1_norm, reference.fpn1.normalization)
    copy_conv(neck.fpn1_conv2, reference.fpn1.conv_transpose2)
    copy_conv(neck.fpn2_conv, reference.fpn2)
    return neck


@pytest.mark.parametrize("grid", [(6, 6), (5, 7)], ids=["even_grid", "odd_grid_floors_the_max_pool"])
def test_fpn_neck_matches_transformers(grid):
    reference = randomised(modeling_beit.BeitFPNNeck(beit_config()))
    maps = random_maps([grid] * 4)
    neck = neck_with_transformers_weights(reference, maps)
    with torch.no_grad():
        expected = [nhwc(t) for t in reference([nchw(m) for m in maps])]
    outputs = neck(maps)
    assert [tuple(s) for s in neck.compute_output_shape([m.shape for m in maps])] == [e.shape for e in expected]
    assert [e.shape[1:3] for e in expected] == pyramid(grid)
    for ours, theirs in zip(outputs, expected):
        assert max_error(ours, theirs) <= ATOL


def test_fpn_neck_round_trips():
    maps = [np.random.default_rng(k).normal(size=(1, 4, 4, 8)).astype("float32") for k in range(4)]
    round_trips(BEiTFPNNeck(8, name="fpn"), maps)


# === UperNet decode head ===


def uper_head_with_transformers_weights(reference, maps):
    head = BEiTUperNetHead(HIDDEN, NUM_CLASSES, pool_scales=reference.pool_scales)
    head.build([m.shape for m in maps])
    for conv, block in zip(head.psp_convs, reference.psp_modules.blocks, strict=True):
        copy_conv_module(conv, block.conv)
    copy_conv_module(head.bottleneck, reference.psp_bottleneck)
    for ours, theirs in zip(head.lateral_convs, reference.lateral_convs, strict=True):
        copy_conv_module(ours, theirs)
    for ours, theirs in zip(head.fpn_convs, reference.fpn_convs, strict=True):
        copy_conv_module(ours, theirs)
    copy_conv_module(head.fpn_bottleneck, reference.fpn_bottleneck)
    copy_conv(head.classifier, reference.classifier)
    return head


@pytest.mark.parametrize(
    "grid",
    [(20, 20), (16, 16), (7, 10)],
    ids=["level3_10x10_overlapping_bins", "level3_8x8", "level3_3x5_non_integer_upsampling"],
)
def test_uper_head_matches_transformers(grid):
    reference = randomised(modeling_beit.BeitUperHead(beit_config()))
    maps = random_maps(pyramid(grid))
    head = uper_head_with_transformers_weights(reference, maps)
    with torch.no_grad():
        expected = nhwc(reference([nchw(m) for m in maps]))
    assert expected.shape == (2, 4 * grid[0], 4 * grid[1], NUM_CLASSES)  # level 0, the finest
    assert tuple(head.compute_output_shape([m.shape for m in maps])) == expected.shape
    assert max_error(head(maps), expected) <= ATOL


def test_uper_head_matches_transformers_when_traced_in_a_functional_model():
    reference = randomised(modeling_beit.BeitUperHead(beit_config(pool_scales=[1, 3])))
    maps = random_maps(pyramid((6, 6)))
    head = uper_head_with_transformers_weights(reference, maps)
    inputs = [keras.Input(shape=m.shape[1:]) for m in maps]
    model = keras.Model(inputs, head(inputs))
    with torch.no_grad():
        expected = nhwc(reference([nchw(m) for m in maps]))
    assert max_error(model.predict(maps, verbose=0), expected) <= ATOL


def test_uper_head_round_trips():
    maps = [np.ones((1, s, s, 8), "float32") for s in (8, 4, 2, 1)]
    round_trips(BEiTUperNetHead(8, 3, pool_scales=(1, 2), name="decode_head"), maps)


# === FCN auxiliary head ===


def fcn_head_with_transformers_weights(reference, x, kernel_size=3):
    head = BEiTFCNHead(
        HIDDEN,
        NUM_CLASSES,
        channels=reference.channels,
        num_convs=reference.num_convs,
        concat_input=reference.concat_input,
        kernel_size=kernel_size,
    )
    head.build(x.shape)
    for ours, theirs in zip(head.convs, reference.convs, strict=True):
        copy_conv_module(ours, theirs)
    assert (head.conv_cat is None) == (not reference.concat_input)
    if reference.concat_input:
        copy_conv_module(head.conv_cat, reference.conv_cat)
    copy_conv(head.classifier, reference.classifier)
    return head


@pytest.mark.parametrize(
    "num_convs, concat_input, kernel_size",
    [(0, False, 3), (1, False, 3), (2, False, 3), (0, True, 3), (1, True, 3), (2, True, 3), (2, True, 1), (1, True, 5)],
)
def test_fcn_head_matches_transformers(num_convs, concat_input, kernel_size):
    config = beit_config(
        auxiliary_num_convs=num_convs,
        auxiliary_concat_input=concat_input,
        auxiliary_channels=HIDDEN if num_convs == 0 else 16,  # no conv: the classifier reads the input
    )
    reference = randomised(modeling_beit.BeitFCNHead(config, kernel_size=kernel_size))
    x = random_maps([(6, 7)])[0]
    head = fcn_head_with_transformers_weights(reference, x, kernel_size)
    with torch.no_grad():
        expected = nhwc(reference([None, None, nchw(x)]))  # in_index 2: the patch-grid level
    assert tuple(head.compute_output_shape(x.shape)) == expected.shape == (2, 6, 7, NUM_CLASSES)
    assert max_error(head(x), expected) <= ATOL


def test_fcn_head_rejects_a_width_mismatch_without_convs_and_even_kernels():
    with pytest.raises(ValueError, match="num_convs=0"):
        BEiTFCNHead(32, 5, channels=16, num_convs=0)
    with pytest.raises(ValueError, match="odd"):
        BEiTFCNHead(32, 5, kernel_size=2)


@pytest.mark.parametrize("concat_input", [False, True])
def test_fcn_head_round_trips(concat_input):
    x = np.ones((1, 3, 3, 8), "float32")
    round_trips(BEiTFCNHead(8, 3, channels=4, num_convs=2, concat_input=concat_input, name="auxiliary_head"), x)


# === Conv-BN-ReLU and dtype policies ===


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_bn_relu_matches_transformers_conv_layer(kernel_size):
    reference = randomised(modeling_beit.BeitConvLayer(HIDDEN, 16, kernel_size=kernel_size, padding=kernel_size // 2))
    x = random_maps([(5, 6)])[0]
    block = ConvBNReLU(16, kernel_size)
    block.build(x.shape)
    copy_conv_module(block, reference)
    with torch.no_grad():
        expected = nhwc(reference(nchw(x)))
    assert max_error(block(x), expected) <= ATOL
    round_trips(ConvBNReLU(4, kernel_size, name="block"), x)


def test_conv_bn_relu_on_a_list_of_maps_convolves_their_channel_concatenation():
    reference = randomised(modeling_beit.BeitConvLayer(3 * HIDDEN, 16, kernel_size=3, padding=1))
    parts = random_maps([(5, 6)] * 3)
    block = ConvBNReLU(16, 3)
    block.build((1, 5, 6, 3 * HIDDEN))
    copy_conv_module(block, reference)
    with torch.no_grad():
        expected = nhwc(reference(torch.cat([nchw(p) for p in parts], dim=1)))
    assert max_error(block(parts), expected) <= ATOL
    # Traced symbolically, the list's channels add up: 3 x 32 in, 16 out.
    symbolic = block([keras.KerasTensor((2, 5, 6, HIDDEN)) for _ in parts])
    assert tuple(symbolic.shape) == (2, 5, 6, 16)


def test_every_sublayer_follows_the_heads_dtype_policy():
    policy = "mixed_bfloat16"
    levels = [(1, s, s, 8) for s in (8, 4, 2, 1)]
    built = [
        (BEiTFPNNeck(8, dtype=policy), [levels[2]] * 4),
        (BEiTUperNetHead(8, 3, dtype=policy), levels),
        (BEiTFCNHead(8, 3, channels=4, num_convs=2, concat_input=True, dtype=policy), levels[2]),
    ]
    for layer, shapes in built:
        layer.build(shapes)
        sublayers = layer._flatten_layers(include_self=False)
        assert sublayers and {sub.dtype_policy.name for sub in sublayers} == {policy}
        assert layer.weights and all(w.dtype == "float32" for w in layer.weights)  # mixed: float32 variables
