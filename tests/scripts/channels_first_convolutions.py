"""Prints, as JSON, how far keras_beit's channels-first convolutions are from torch's.

Run by tests/test_channels_first.py with TF_ENABLE_ONEDNN_OPTS=0, where
TensorFlow's CPU kernels refuse NCHW whatever the machine's CPU.
"""

import json

import numpy as np
import torch
import torch.nn.functional as F

from keras_beit.layers.conv import Conv2D
from keras_beit.layers.conv import Conv2DTranspose
from keras_beit.layers.upernet import ConvBNReLU

rng = np.random.default_rng(0)
images = rng.normal(size=(2, 3, 16, 16)).astype("float32")
maps = rng.normal(size=(2, 6, 4, 4)).astype("float32")


def _random_weights(layer):
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))


def _max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - expected.numpy())))


def _torch_kernel(layer):
    # Keras keeps (h, w, in, out), or (h, w, out, in) for a transposed convolution;
    # torch wants (out, in, h, w), or (in, out, h, w): the same permutation.
    return torch.from_numpy(np.asarray(layer.kernel)).permute(3, 2, 0, 1)


patchify = Conv2D(5, 4, strides=4, data_format="channels_first")
patchify.build(images.shape)
_random_weights(patchify)
upsample = Conv2DTranspose(4, 2, strides=2, data_format="channels_first")
upsample.build(maps.shape)
_random_weights(upsample)
fuse = ConvBNReLU(4, 3, data_format="channels_first")
fuse.build(maps.shape)
_random_weights(fuse)

torch_maps = torch.from_numpy(maps)
errors = {
    "Conv2D": _max_error(
        patchify(images),
        F.conv2d(torch.from_numpy(images), _torch_kernel(patchify), torch.from_numpy(np.asarray(patchify.bias)), 4),
    ),
    "Conv2DTranspose": _max_error(
        upsample(maps),
        F.conv_transpose2d(torch_maps, _torch_kernel(upsample), torch.from_numpy(np.asarray(upsample.bias)), 2),
    ),
    # The fuse conv's sum over channel groups, against one convolution of their concatenation.
    "ConvBNReLU parts": _max_error(
        fuse._convolve([maps[:, :2], maps[:, 2:]]), F.conv2d(torch_maps, _torch_kernel(fuse.conv), padding=1)
    ),
}
print(json.dumps(errors))
