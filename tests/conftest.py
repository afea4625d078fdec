"""Shared fixtures. The Keras backend is chosen per process with KERAS_BACKEND."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
