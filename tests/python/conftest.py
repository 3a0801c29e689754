"""Shared fixtures for the xentkit Python tests."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xentkit  # noqa: E402

FLOAT_DTYPES = (np.float32, np.float64)
ALL_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def pytest_collection_modifyitems(config, items):
    if xentkit.cuda_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_threads():
    """Puts the thread count back to what it was before the test."""
    before = xentkit.get_num_threads()
    yield before
    xentkit.set_num_threads(before)


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def real_dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=ALL_FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def any_dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=xentkit.simd_levels_available())
def level(request):
    """Every instruction-set level this machine runs, each set for one test and put back after."""
    before = xentkit.simd_level()
    xentkit.set_simd_level(request.param)
    yield request.param
    xentkit.set_simd_level(before)
