"""SoftmaxWithLoss: values, gradients, normalization, axes, labels and edge cases."""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xentkit
from references import (LOSS_CAP, MODES, assert_diff_close, assert_loss_close, central_difference,
                        compute_dtype, normalizer, softmax_ref)

swl = xentkit.softmax_with_loss


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _caffe_fixture(dtype, seed):
    """Caffe's fixture: data (10, 5, 2, 3) ~ N(0, 10), labels (10, 1, 2, 3) random int mod 5."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(10, 5, 2, 3)) * 10).astype(dtype)
    labels = (rng.integers(0, 2**31, size=(10, 1, 2, 3)) % 5).astype(dtype)
    return x, labels


def _caffe_gradient_check(x, labels, lw, **kw):
    _, _, _, capped = softmax_ref(x, labels, **kw)
    assert capped == 0  # the FLT_MIN cap would put a kink in the objective
    _, diff = swl(x, labels, loss_weight=lw, **kw)
    numeric = central_difference(lambda a: lw * swl(a, labels, diff=False, **kw)[0],
                                 x.copy(), 1e-2)
    analytic = diff.astype(np.float64)
    bound = 1e-2 * np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1.0)
    assert np.all(np.abs(analytic - numeric) <= bound)
    assert np.abs(analytic).max() > 1e-3
    return diff


# ----------------------------------------------------------------------------------------------
# Caffe's unit tests, re-created
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_gradient(dtype):
    x, labels = _caffe_fixture(dtype, 1701)
    diff = _caffe_gradient_check(x, labels, 3.0)
    _, expected, _, _ = softmax_ref(x, labels, loss_weight=3.0)
    assert_diff_close(diff, expected, dtype, 3.0 / 60)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_forward_ignore_label(dtype):
    x, labels = _caffe_fixture(dtype, 1702)
    full, _ = swl(x, labels, normalize=False, diff=False)
    total = sum(swl(x, labels, normalize=False, ignore_label=k, diff=False)[0] for k in range(5))
    np.testing.assert_allclose(total, 4 * full, rtol=1e-12 if dtype == np.float64 else 1e-5)
    assert full > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_gradient_ignore_label(dtype):
    x, labels = _caffe_fixture(dtype, 1703)
    assert 0 < np.sum(labels == 0) < labels.size
    diff = _caffe_gradient_check(x, labels, 3.0, ignore_label=0)
    d = diff.reshape(10, 5, 6)
    ignored = labels.reshape(10, 6) == 0
    assert np.all(d.transpose(0, 2, 1)[ignored] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_gradient_unnormalized(dtype):
    x, labels = _caffe_fixture(dtype, 1704)
    diff = _caffe_gradient_check(x, labels, 3.0, normalize=False)
    _, expected, _, _ = softmax_ref(x, labels, normalize=False, loss_weight=3.0)
    assert_diff_close(diff, expected, dtype, 3.0 / 10)


def test_gradient_check_tight_float64():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 5)) * 2
    labels = rng.integers(0, 4, size=(3, 5))
    labels[0, 0] = 255
    for mode in MODES:
        lw = 0.7
        kw = dict(ignore_label=255, normalization=mode)
        _, diff = swl(x, labels, loss_weight=lw, **kw)
        numeric = central_difference(lambda a: lw * swl(a, labels, diff=False, **kw)[0],
                                     x.copy(), 1e-5)
        np.testing.assert_allclose(diff, numeric, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Normalization, ignore_label, loss_weight
# ----------------------------------------------------------------------------------------------

CASES = [  # (scores shape, axis)
    ((6, 4), 1),
    ((3, 5, 2, 3), 1),
    ((2, 3, 4), -1),
    ((4, 3, 2), 0),
    ((2, 3, 4, 5), 2),
    ((7,), 0),
]


def _labels_for(rng, shape, axis, ignore_label, frac=0.3):
    ax = axis % len(shape)
    c = shape[ax]
    lshape = tuple(d for i, d in enumerate(shape) if i != ax) or (1,)
    labels = rng.integers(0, c, size=lshape)
    if ignore_label is not None:
        mask = rng.uniform(size=lshape) < frac
        labels[mask] = ignore_label
    return labels


@pytest.mark.parametrize("shape, axis", CASES, ids=str)
@pytest.mark.parametrize("normalization", ["full", "valid", "batch_size", "none", "VALID",
                                           "Batch_Size"])
@pytest.mark.parametrize("ignore_label", [None, 255, 0, -1])
def test_modes_against_reference(real_dtype, shape, axis, normalization, ignore_label):
    rng = np.random.default_rng(_seed(shape, axis, normalization, ignore_label))
    x = (rng.normal(size=shape) * 3).astype(real_dtype)
    labels = _labels_for(rng, shape, axis, ignore_label)
    lw = 2.5
    loss, diff = swl(x, labels, axis=axis, ignore_label=ignore_label,
                     normalization=normalization, loss_weight=lw)
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, axis=axis, ignore_label=ignore_label,
                                           normalization=normalization, loss_weight=lw)
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, lw)
    if ignore_label is not None:
        ignored = labels == ignore_label
        moved = np.moveaxis(diff, axis, -1).reshape(ignored.size, shape[axis])
        assert np.all(moved[ignored.reshape(-1)] == 0)


def test_normalizers():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 3, 5))
    labels = rng.integers(0, 3, size=(4, 5))
    labels[0, :2] = -1  # 18 of 20 valid
    raw_loss, raw_diff = swl(x, labels, ignore_label=-1, normalization="none")
    for mode, z in {"full": 20, "valid": 18, "batch_size": 4, "none": 1}.items():
        loss, diff = swl(x, labels, ignore_label=-1, normalization=mode)
        np.testing.assert_allclose(loss * z, raw_loss, rtol=1e-12)
        np.testing.assert_allclose(diff * z, raw_diff, rtol=1e-12, atol=1e-16)


def test_valid_without_ignore_equals_full():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 3, 5))
    labels = rng.integers(0, 3, size=(4, 5))
    a = swl(x, labels, normalization="valid")
    b = swl(x, labels, normalization="full")
    assert a[0] == pytest.approx(b[0], rel=1e-14)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14)


def test_default_is_valid():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3, 5))
    labels = rng.integers(0, 3, size=(4, 5))
    labels[1] = 255
    default = swl(x, labels, ignore_label=255)
    valid = swl(x, labels, ignore_label=255, normalization="valid")
    batch = swl(x, labels, ignore_label=255, normalization="batch_size")
    assert default[0] == valid[0]
    np.testing.assert_array_equal(default[1], valid[1])
    assert default[0] != pytest.approx(batch[0])


@pytest.mark.parametrize("normalize, mode", [(True, "valid"), (False, "batch_size")])
def test_legacy_normalize_flag(normalize, mode):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 4))
    labels = rng.integers(0, 4, size=5)
    labels[:2] = 255
    got = swl(x, labels, ignore_label=255, normalize=normalize)
    want = swl(x, labels, ignore_label=255, normalization=mode)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", ["full", "none", "valid", "batch_size"])
def test_normalization_wins_over_normalize(normalize, normalization):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(5, 4, 3))
    labels = rng.integers(0, 4, size=(5, 3))
    labels[:2] = 255
    got = swl(x, labels, ignore_label=255, normalization=normalization, normalize=normalize)
    want = swl(x, labels, ignore_label=255, normalization=normalization)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("lw", [0.0, 0.25, 3.0, -2.0, 1e4])
def test_loss_weight_scales_diff_only(lw):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    base_loss, base_diff = swl(x, labels)
    loss, diff = swl(x, labels, loss_weight=lw)
    assert loss == base_loss
    np.testing.assert_allclose(diff, lw * base_diff, rtol=1e-14, atol=0)
    if lw == 0:
        assert np.all(diff == 0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("normalization", ["full", "valid", "batch_size", "none"])
def test_all_ignored(real_dtype, normalization):
    x = np.random.default_rng(12).normal(size=(3, 4, 2)).astype(real_dtype)
    labels = np.full((3, 2), 255, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, diff, prob = swl(x, labels, ignore_label=255, normalization=normalization,
                               prob=True)
    assert loss == 0.0 and not math.isnan(loss)
    assert diff.dtype == real_dtype and np.all(diff == 0)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Axes and label layouts
# ----------------------------------------------------------------------------------------------

def test_axis_default_is_one():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 4, 5))
    labels = rng.integers(0, 4, size=(3, 5))
    a = swl(x, labels)
    b = swl(x, labels, axis=1)
    c = swl(x, labels, axis=-2)
    assert a[0] == b[0] == c[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1], c[1])


@pytest.mark.parametrize("shape, axis, lshape", [
    ((4, 6), -1, (4,)),
    ((3, 4, 6), -1, (3, 4)),
    ((5, 3, 2), 0, (3, 2)),
    ((5, 3, 2), 0, (6,)),
    ((2, 3, 4, 5), 2, (2, 3, 5)),
    ((2, 3, 4, 5), -2, (30,)),
    ((2, 2, 3, 2, 2), 3, (2, 2, 3, 2)),
], ids=str)
def test_axes(real_dtype, shape, axis, lshape):
    rng = np.random.default_rng(_seed(shape, axis, lshape))
    x = (rng.normal(size=shape) * 2).astype(real_dtype)
    c = shape[axis]
    labels = rng.integers(0, c, size=lshape)
    loss, diff = swl(x, labels, axis=axis, normalization="full")
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, axis=axis, normalization="full")
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1.0)
    # Same as moving the class axis to position 1 of an (outer, C, inner) array.
    ax = axis % len(shape)
    outer = math.prod(shape[:ax])
    x3 = x.reshape(outer, c, -1)
    loss3, diff3 = swl(np.ascontiguousarray(x3), labels.reshape(-1), normalization="full")
    assert loss3 == pytest.approx(loss, rel=1e-12 if real_dtype == np.float64 else 1e-6)
    np.testing.assert_allclose(diff3.reshape(shape), diff, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("axis", [0, -1])
def test_one_dimensional_scores(real_dtype, axis):
    x = np.array([0.5, -1.0, 2.0, 0.0], dtype=real_dtype)
    for lab in (np.array([2]), np.array([[2]]), np.array([2.0])):
        loss, diff = swl(x, lab, axis=axis)
        exp_loss, exp_diff, _, _ = softmax_ref(x, lab, axis=0)
        assert diff.shape == (4,)
        assert_loss_close(loss, exp_loss, real_dtype)
        assert_diff_close(diff, exp_diff, real_dtype, 1.0)


@pytest.mark.parametrize("lshape", [(4,), (4, 1, 2, 3), (4, 2, 3), (24,), (4, 6, 1)], ids=str)
def test_label_layouts(lshape):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(4, 5, 2, 3))
    labels = rng.integers(0, 5, size=(4, 2, 3))
    ref = swl(x, labels)
    if lshape == (4,):
        x = x[:, :, :1, :1].copy()
        labels = labels[:, :1, :1]
        ref = swl(x, labels.reshape(4, 1, 1))
    got = swl(x, labels.reshape(lshape))
    assert got[0] == ref[0]
    np.testing.assert_array_equal(got[1], ref[1])
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels)
    np.testing.assert_allclose(got[0], exp_loss, rtol=1e-12)
    np.testing.assert_allclose(got[1], exp_diff, rtol=1e-12, atol=1e-16)


LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64]


@pytest.mark.parametrize("ldtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_label_dtypes(real_dtype, ldtype):
    rng = np.random.default_rng(15)
    x = rng.normal(size=(6, 7, 3)).astype(real_dtype)
    labels = rng.integers(0, 7, size=(6, 3))
    loss, diff = swl(x, labels.astype(ldtype))
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels)
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1.0)


@pytest.mark.parametrize("ldtype", [np.int8, np.int16, np.int32, np.int64, np.float16,
                                    np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_negative_ignore_label_in_signed_dtypes(ldtype):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(8, 3))
    labels = rng.integers(0, 3, size=8)
    labels[[1, 4]] = -1
    loss, diff = swl(x, labels.astype(ldtype), ignore_label=-1)
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, ignore_label=-1)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    np.testing.assert_allclose(diff, exp_diff, rtol=1e-12, atol=1e-16)
    assert np.all(diff[[1, 4]] == 0)


@pytest.mark.parametrize("ldtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_ignore_255_in_unsigned_dtypes(ldtype):
    rng = np.random.default_rng(17)
    x = rng.normal(size=(8, 3))
    labels = rng.integers(0, 3, size=8)
    labels[[0, 5]] = 255
    loss, diff = swl(x, labels.astype(ldtype), ignore_label=255)
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, ignore_label=255)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    np.testing.assert_allclose(diff, exp_diff, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("ldtype", [np.float16, np.float32, np.float64])
def test_float_labels_truncated_toward_zero(ldtype):
    x = np.random.default_rng(18).normal(size=(5, 4))
    labels = np.array([2.7, -0.5, -1.7, 3.99, 0.2], dtype=ldtype)
    loss, diff = swl(x, labels, ignore_label=-1)
    as_int = np.array([2, 0, -1, 3, 0])
    exp_loss, exp_diff, _, _ = softmax_ref(x, as_int, ignore_label=-1)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    np.testing.assert_allclose(diff, exp_diff, rtol=1e-12, atol=1e-16)
    assert np.all(diff[2] == 0)  # -1.7 -> -1: ignored
    assert diff[1, 0] < 0  # -0.5 -> class 0, valid


def test_ignore_label_inside_range():
    """ignore_label 0: class 0 simply never contributes."""
    rng = np.random.default_rng(19)
    x = rng.normal(size=(20, 3))
    labels = rng.integers(0, 3, size=20)
    assert 0 < np.sum(labels == 0) < 20
    loss, diff = swl(x, labels, ignore_label=0)
    keep = labels != 0
    sub_loss, sub_diff = swl(x[keep], labels[keep])
    np.testing.assert_allclose(loss, sub_loss, rtol=1e-12)
    np.testing.assert_allclose(diff[keep], sub_diff, rtol=1e-12, atol=1e-16)
    assert np.all(diff[~keep] == 0)


# ----------------------------------------------------------------------------------------------
# Extreme values: the FLT_MIN cap, confident predictions, infinities and NaN
# ----------------------------------------------------------------------------------------------

def test_flt_min_cap(real_dtype):
    x = np.array([[0.0, -200.0], [0.0, -1e4], [0.0, -87.0], [5.0, -5.0]], dtype=real_dtype)
    labels = np.array([1, 1, 1, 0])
    loss, diff = swl(x, labels, normalization="none")
    exp_loss, exp_diff, _, capped = softmax_ref(x, labels, normalization="none")
    assert capped == 2
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1.0)
    single, d = swl(x[:1], labels[:1])
    bound = 87.33654475055311 if real_dtype == np.float64 else float(np.float32(LOSS_CAP))
    assert single <= bound
    np.testing.assert_allclose(single, LOSS_CAP, rtol=1e-15 if real_dtype == np.float64 else 1e-7)
    # The diff is not clamped: it is p - onehot.
    np.testing.assert_allclose(d[0], [1.0, -1.0], rtol=1e-12)


def test_below_cap_not_changed_by_underflow():
    """p = e^-87 is above FLT_MIN: the loss is 87, not the cap."""
    x = np.array([[0.0, -87.0]], dtype=np.float32)
    loss, _ = swl(x, np.array([1]))
    np.testing.assert_allclose(loss, 87.0, rtol=1e-6)
    x64 = np.array([[0.0, -87.0]])
    np.testing.assert_allclose(swl(x64, np.array([1]))[0], 87.0 + math.log1p(math.exp(-87.0)),
                               rtol=1e-14)


def test_cap_bounds_random_large_logits(real_dtype):
    rng = np.random.default_rng(20)
    x = (rng.normal(size=(50, 10)) * 100).astype(real_dtype)
    labels = rng.integers(0, 10, size=50)
    loss, diff = swl(x, labels, normalization="none")
    exp_loss, exp_diff, _, capped = softmax_ref(x, labels, normalization="none")
    assert capped > 0
    assert loss <= 50 * LOSS_CAP * (1 + (1e-15 if real_dtype == np.float64 else 1e-6))
    assert loss >= capped * LOSS_CAP * (1 - 1e-6)
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1.0)


def test_confident_prediction_float64():
    x = np.array([[50.0, 0.0, 0.0]])
    loss, diff = swl(x, np.array([0]))
    e = math.exp(-50.0)
    np.testing.assert_allclose(diff[0, 0], -(2 * e) / (1 + 2 * e), rtol=1e-12)
    np.testing.assert_allclose(diff[0, 1:], e / (1 + 2 * e), rtol=1e-12)
    assert diff[0, 0] != 0
    assert 0 <= loss <= 1e-20


def test_confident_prediction_float32():
    x = np.array([[30.0, 0.0, 0.0]], dtype=np.float32)
    _, diff = swl(x, np.array([0]))
    e = math.exp(-30.0)
    np.testing.assert_allclose(diff[0, 0], -(2 * e) / (1 + 2 * e), rtol=1e-5)


@pytest.mark.parametrize("axis", [1, -1])
def test_confident_prediction_with_inner(axis):
    x = np.zeros((2, 3, 4))
    x[:, 1, :] = 45.0
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    labels = np.ones((2, 4), dtype=np.int64)
    _, diff = swl(x, labels, axis=axis, normalization="none")
    e = math.exp(-45.0)
    at_label = np.take(diff, 1, axis=axis)
    np.testing.assert_allclose(at_label, -(2 * e) / (1 + 2 * e), rtol=1e-12)


def test_prob_output(any_dtype):
    rng = np.random.default_rng(21)
    x = (rng.normal(size=(3, 4, 5)) * 2).astype(any_dtype)
    labels = rng.integers(0, 4, size=(3, 5))
    loss, diff, prob = swl(x, labels, prob=True)
    exp_loss, exp_diff, exp_prob, _ = softmax_ref(x, labels)
    dt = compute_dtype(any_dtype)
    assert prob.shape == x.shape and prob.dtype == any_dtype
    assert diff.dtype == any_dtype
    tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6,
           np.dtype(np.float16): 2e-3}[np.dtype(any_dtype)]
    np.testing.assert_allclose(prob.astype(np.float64).sum(axis=1), 1.0, rtol=tol * 4)
    np.testing.assert_allclose(prob, exp_prob, rtol=tol, atol=tol * 1e-3)
    assert_loss_close(loss, exp_loss, dt)
    assert_diff_close(diff, exp_diff, any_dtype, 1.0)
    loss2, no_diff, prob2 = swl(x, labels, prob=True, diff=False)
    assert no_diff is None
    assert loss2 == loss
    np.testing.assert_array_equal(prob2, prob)
    loss3, diff3 = swl(x, labels, prob=False)
    assert loss3 == loss
    np.testing.assert_array_equal(diff3, diff)


def test_prob_with_axis():
    rng = np.random.default_rng(22)
    x = rng.normal(size=(2, 3, 6))
    labels = rng.integers(0, 6, size=(2, 3))
    _, _, prob = swl(x, labels, axis=-1, prob=True)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(prob, e / e.sum(axis=-1, keepdims=True), rtol=1e-13)


@pytest.mark.parametrize("col", [0, 1])
def test_nan_logit_gives_nan_loss(real_dtype, col):
    x = np.array([[0.3, -0.2, 1.0], [0.1, 0.2, 0.3]], dtype=real_dtype)
    x[0, col] = np.nan
    loss, diff = swl(x, np.array([0, 2]))
    assert math.isnan(loss)
    assert np.all(np.isnan(diff[0]))
    assert np.all(np.isfinite(diff[1]))


def test_inf_logit_at_label_gives_zero_loss(real_dtype):
    x = np.array([[np.inf, 0.0, 3.0], [1.0, 2.0, 3.0]], dtype=real_dtype)
    loss, diff = swl(x, np.array([0, 1]), normalization="none")
    _, exp_row1, _, _ = softmax_ref(x[1:], np.array([1]), normalization="none")
    np.testing.assert_allclose(loss, swl(x[1:], np.array([1]), normalization="none")[0], rtol=1e-6)
    single, d = swl(x[:1], np.array([0]))
    assert single == 0.0
    np.testing.assert_array_equal(d, [[0.0, 0.0, 0.0]])
    assert_diff_close(diff[1:], exp_row1, real_dtype, 1.0)


def test_minus_inf_logit_elsewhere(real_dtype):
    x = np.array([[0.0, -np.inf, 1.0]], dtype=real_dtype)
    loss, diff = swl(x, np.array([0]))
    _, exp_diff, _, _ = softmax_ref(np.array([[0.0, 1.0]]), np.array([0]))
    np.testing.assert_allclose(loss, math.log1p(math.e), rtol=1e-6)
    assert diff[0, 1] == 0
    np.testing.assert_allclose(diff[0, [0, 2]], exp_diff[0], rtol=1e-6)


def test_float16_scores():
    rng = np.random.default_rng(23)
    x = (rng.normal(size=(16, 10)) * 3).astype(np.float16)
    labels = rng.integers(0, 10, size=16)
    loss, diff = swl(x, labels, loss_weight=2.0)
    assert diff.dtype == np.float16
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, loss_weight=2.0)
    assert_loss_close(loss, exp_loss, np.float16)
    assert_diff_close(diff, exp_diff, np.float16, 2.0 / 16)
    loss32, diff32 = swl(x.astype(np.float32), labels, loss_weight=2.0)
    assert loss == loss32
    np.testing.assert_array_equal(diff, diff32.astype(np.float16))


def test_float32_sum_accuracy_large():
    rng = np.random.default_rng(24)
    x = rng.normal(size=(1 << 18, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=1 << 18)
    loss, _ = swl(x, labels, normalization="none", diff=False)
    exp_loss, _, _, _ = softmax_ref(x, labels, normalization="none")
    np.testing.assert_allclose(loss, exp_loss, rtol=2e-6)


# ----------------------------------------------------------------------------------------------
# Property tests
# ----------------------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    axis_pick=st.integers(0, 7),
    dtype=st.sampled_from([np.float32, np.float64]),
    mode=st.sampled_from(MODES + ("FULL",)),
    ignore=st.sampled_from([None, 255, 0, -1]),
    lw=st.floats(-4, 4).filter(lambda v: v == 0 or abs(v) > 1e-3),
    scale=st.sampled_from([0.1, 1.0, 10.0, 50.0]),
    float_labels=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_reference(shape, axis_pick, dtype, mode, ignore, lw, scale,
                                    float_labels, seed):
    nd = len(shape)
    axis = axis_pick % (2 * nd) - nd  # anywhere in [-nd, nd)
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * scale).astype(dtype)
    labels = _labels_for(rng, shape, axis, ignore, frac=0.25)
    if float_labels:
        labels = labels + np.where(labels >= 0, 0.5, -0.5) * rng.uniform(size=labels.shape)
    loss, diff = swl(x, labels, axis=axis, ignore_label=ignore, normalization=mode,
                     loss_weight=lw)
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, axis=axis, ignore_label=ignore,
                                           normalization=mode, loss_weight=lw)
    ax = axis % nd
    positions = math.prod(shape) // shape[ax]
    atol = positions * scale * (1e-14 if dtype == np.float64 else 1e-6)
    assert_loss_close(loss, exp_loss, dtype, atol=atol)
    assert_diff_close(diff, exp_diff, dtype, lw)


# ----------------------------------------------------------------------------------------------
# PyTorch as a second oracle
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 5), (4, 6, 3), (2, 4, 3, 5)], ids=str)
@pytest.mark.parametrize("lw", [1.0, 2.5])
def test_matches_torch_cross_entropy(shape, lw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(_seed("torch", shape, lw))
    x = rng.normal(size=shape) * 4
    c = shape[1]
    labels = rng.integers(0, c, size=(shape[0],) + shape[2:])
    labels.reshape(-1)[::5] = 7  # ignored (outside [0, C))
    _, _, _, capped = softmax_ref(x, labels, ignore_label=7)
    assert capped == 0
    loss, diff = swl(x, labels, ignore_label=7, normalization="valid", loss_weight=lw)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tl = torch.tensor(labels, dtype=torch.int64)
    out = F.cross_entropy(tx, tl, ignore_index=7, reduction="mean")
    (lw * out).backward()
    np.testing.assert_allclose(loss, out.item(), rtol=1e-12)
    np.testing.assert_allclose(diff, tx.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_matches_torch_float32():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(25)
    x = (rng.normal(size=(32, 10)) * 3).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    loss, diff = swl(x, labels, loss_weight=3.0)
    tx = torch.tensor(x, requires_grad=True)
    out = F.cross_entropy(tx, torch.tensor(labels), reduction="mean")
    (3.0 * out).backward()
    np.testing.assert_allclose(loss, out.item(), rtol=1e-5)
    np.testing.assert_allclose(diff, tx.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gap", [20.0, 40.0, 50.0, 300.0])
def test_confident_prediction_loss_keeps_relative_precision(gap):
    # p[label] rounds to 1; the loss -log p = log1p(2 e^-gap) must not collapse to 0.
    x = np.array([[gap, 0.0, 0.0], [0.0, gap, 0.0]])
    loss, _ = xentkit.softmax_with_loss(x, np.array([0, 1]), diff=False)
    expected = math.log1p(2.0 * math.exp(-gap))
    assert loss > 0.0
    assert loss == pytest.approx(expected, rel=1e-12)
