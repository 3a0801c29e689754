"""SigmoidCrossEntropyLoss: values, gradients, normalization, ignore and edge cases."""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xentkit
from references import (MODES, assert_diff_close, assert_loss_close, central_difference,
                        compute_dtype, normalizer, sigmoid_naive_ref, sigmoid_ref)

sce = xentkit.sigmoid_cross_entropy_loss


def _inputs(rng, shape, dtype, *, scale=1.0):
    x = (rng.normal(size=shape) * scale).astype(dtype)
    t = rng.uniform(size=shape).astype(dtype)
    return x, t


# ----------------------------------------------------------------------------------------------
# Caffe's unit tests, re-created
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_forward_matches_naive_reference(dtype):
    """100 trials of (10, 5, 1, 1) N(0,1) data, U[0,1] targets, loss_weight 3.7."""
    rng = np.random.default_rng(1701)
    for _ in range(100):
        x, t = _inputs(rng, (10, 5, 1, 1), dtype)
        loss, diff = sce(x, t, loss_weight=3.7)
        expected = sigmoid_naive_ref(x, t)
        assert_loss_close(loss, expected, dtype, atol=1e-12)
        # loss_weight scales only the diff: the returned loss is the unweighted one.
        assert_loss_close(sce(x, t, diff=False)[0], expected, dtype, atol=1e-12)
        sig = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
        assert_diff_close(diff, 3.7 * (sig - t) / 10, dtype, 3.7 / 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffe_gradient_check(dtype):
    """Central differences with Caffe's step 1e-2 and threshold 1e-2; objective loss_weight*loss."""
    rng = np.random.default_rng(1702)
    x, t = _inputs(rng, (10, 5, 1, 1), dtype)
    lw = 3.7
    _, diff = sce(x, t, loss_weight=lw)
    numeric = central_difference(lambda a: lw * sce(a, t, diff=False)[0], x.copy(), 1e-2)
    analytic = diff.astype(np.float64)
    bound = 1e-2 * np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1.0)
    assert np.all(np.abs(analytic - numeric) <= bound)
    # The gradient is not trivially zero, and it matches the closed form.
    assert np.abs(analytic).max() > 1e-3
    np.testing.assert_allclose(numeric, analytic, rtol=1e-3, atol=1e-4)


def test_gradient_check_tight_float64():
    rng = np.random.default_rng(1703)
    x, t = _inputs(rng, (6, 7), np.float64, scale=3.0)
    for mode in MODES:
        lw = 1.9
        _, diff = sce(x, t, normalization=mode, loss_weight=lw)
        numeric = central_difference(
            lambda a: lw * sce(a, t, normalization=mode, diff=False)[0], x.copy(), 1e-5)
        np.testing.assert_allclose(diff, numeric, rtol=1e-6, atol=1e-9)


def test_caffe_ignore_gradient():
    rng = np.random.default_rng(1704)
    x, t = _inputs(rng, (10, 5, 1, 1), np.float64)
    flat = t.reshape(-1)
    flat[:25] = -1
    _, diff = sce(x, t, ignore_label=-1)
    d = diff.reshape(-1)
    assert np.all(d[:25] == 0)
    assert np.all(d[25:] != 0)


# ----------------------------------------------------------------------------------------------
# Normalization, ignore_label, loss_weight
# ----------------------------------------------------------------------------------------------

SHAPES = [(7,), (5, 3), (4, 3, 2, 2), (2, 3, 1, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("normalization", ["full", "valid", "batch_size", "none", "VALID", "Full",
                                           "BATCH_SIZE", "None"])
@pytest.mark.parametrize("ignore_label", [None, -1, 1])
def test_modes_against_reference(real_dtype, shape, normalization, ignore_label):
    rng = np.random.default_rng(zlib.crc32(repr((shape, normalization, ignore_label)).encode()))
    x, t = _inputs(rng, shape, real_dtype, scale=2.0)
    if ignore_label is not None:
        mask = rng.uniform(size=shape) < 0.3
        # Values whose truncation equals the ignore label (e.g. -1.6 -> -1, 1.3 -> 1).
        t[mask] = ignore_label + np.copysign(0.6, ignore_label)
    lw = 1.7
    loss, diff = sce(x, t, ignore_label=ignore_label, normalization=normalization, loss_weight=lw)
    exp_loss, exp_diff = sigmoid_ref(x, t, ignore_label=ignore_label,
                                     normalization=normalization, loss_weight=lw)
    z = normalizer(normalization.lower(), shape[0], x.size // shape[0],
                   x.size if ignore_label is None else int((np.trunc(t) != ignore_label).sum()))
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, lw / z)
    if ignore_label is not None:
        ignored = np.trunc(t) == ignore_label
        assert np.all(diff[ignored] == 0)


def test_normalizers_differ_as_specified():
    """One input, four modes: the loss times the mode's normalizer is the same raw sum."""
    rng = np.random.default_rng(11)
    x, t = _inputs(rng, (4, 6), np.float64)
    t[0, :3] = -1.0  # 3 of 24 ignored
    raw = {}
    for mode, z in {"full": 24, "valid": 21, "batch_size": 4, "none": 1}.items():
        loss, diff = sce(x, t, ignore_label=-1, normalization=mode)
        raw[mode] = loss * z
        np.testing.assert_allclose(diff * z, sce(x, t, ignore_label=-1, normalization="none")[1],
                                   rtol=1e-12, atol=1e-15)
    values = list(raw.values())
    np.testing.assert_allclose(values, values[0], rtol=1e-12)


def test_default_is_batch_size():
    rng = np.random.default_rng(12)
    x, t = _inputs(rng, (4, 6), np.float64)
    t[1, :] = -1.0
    default = sce(x, t, ignore_label=-1)
    explicit = sce(x, t, ignore_label=-1, normalization="batch_size")
    valid = sce(x, t, ignore_label=-1, normalization="valid")
    assert default[0] == explicit[0]
    np.testing.assert_array_equal(default[1], explicit[1])
    assert default[0] != pytest.approx(valid[0])


@pytest.mark.parametrize("normalize, mode", [(True, "valid"), (False, "batch_size")])
def test_legacy_normalize_flag(normalize, mode):
    rng = np.random.default_rng(13)
    x, t = _inputs(rng, (5, 4), np.float64)
    t[:2, :] = -1.0
    got = sce(x, t, ignore_label=-1, normalize=normalize)
    want = sce(x, t, ignore_label=-1, normalization=mode)
    other = sce(x, t, ignore_label=-1,
                normalization="batch_size" if mode == "valid" else "valid")
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0] != pytest.approx(other[0])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", ["full", "none"])
def test_normalization_wins_over_normalize(normalize, normalization):
    rng = np.random.default_rng(14)
    x, t = _inputs(rng, (5, 4), np.float64)
    t[:2, :] = -1.0
    got = sce(x, t, ignore_label=-1, normalization=normalization, normalize=normalize)
    want = sce(x, t, ignore_label=-1, normalization=normalization)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("lw", [0.0, 0.5, 2.0, -1.25, 1e3])
def test_loss_weight_scales_diff_only(lw):
    rng = np.random.default_rng(15)
    x, t = _inputs(rng, (6, 5), np.float64)
    base_loss, base_diff = sce(x, t)
    loss, diff = sce(x, t, loss_weight=lw)
    assert loss == base_loss
    np.testing.assert_allclose(diff, lw * base_diff, rtol=1e-14, atol=0)
    if lw == 0:
        assert np.all(diff == 0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("normalization", ["full", "valid", "batch_size", "none"])
def test_all_ignored(real_dtype, normalization):
    x = np.random.default_rng(16).normal(size=(3, 4)).astype(real_dtype)
    t = np.full((3, 4), 255, dtype=real_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, diff = sce(x, t, ignore_label=255, normalization=normalization)
    assert loss == 0.0 and not math.isnan(loss)
    assert diff.dtype == real_dtype
    assert np.all(diff == 0)


# ----------------------------------------------------------------------------------------------
# Targets: soft, out of range, truncation for ignore, integer dtypes, shapes
# ----------------------------------------------------------------------------------------------

def test_soft_targets_against_bce_form():
    """For soft targets in (0, 1), the loss is -[t log s + (1-t) log(1-s)]."""
    rng = np.random.default_rng(17)
    x = rng.normal(size=(8, 3)) * 3
    t = rng.uniform(0.05, 0.95, size=(8, 3))
    s = 1.0 / (1.0 + np.exp(-x))
    expected = -np.sum(t * np.log(s) + (1 - t) * np.log1p(-s)) / 8
    loss, diff = sce(x, t)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(diff, (s - t) / 8, rtol=1e-12, atol=1e-16)


def test_targets_not_range_checked():
    x = np.array([3.0, -2.0, 0.5])
    t = np.array([2.0, -1.5, 7.0])
    loss, diff = sce(x, t, normalization="none")
    per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(loss, per.sum(), rtol=1e-12)
    single, _ = sce(np.array([3.0]), np.array([2.0]), normalization="none")
    assert single < 0
    np.testing.assert_allclose(single, 3.0 - 6.0 + math.log1p(math.exp(-3.0)), rtol=1e-12)
    np.testing.assert_allclose(diff, 1 / (1 + np.exp(-x)) - t, rtol=1e-12)


def test_ignore_uses_truncated_target():
    x = np.array([0.3, -1.2, 2.0, 0.7, -0.4, 1.1])
    t = np.array([0.5, 1.0, 0.0, -0.7, 0.999, 1.5])
    loss, diff = sce(x, t, ignore_label=0, normalization="valid")
    kept = np.array([False, True, False, False, False, True])
    per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(loss, per[kept].sum() / 2, rtol=1e-12)
    assert np.all(diff[~kept] == 0)
    np.testing.assert_allclose(diff[kept], (1 / (1 + np.exp(-x[kept])) - t[kept]) / 2, rtol=1e-12)


def test_ignore_negative_truncation():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    t = np.array([-1.0, -1.5, -1.99, -2.0, -0.5])
    _, diff = sce(x, t, ignore_label=-1)
    np.testing.assert_array_equal(diff[:3], 0)
    assert np.all(diff[3:] != 0)


@pytest.mark.parametrize("tdtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.float32,
                                    np.bool_])
def test_integer_and_other_target_dtypes(real_dtype, tdtype):
    rng = np.random.default_rng(18)
    x = rng.normal(size=(6, 4)).astype(real_dtype)
    t_int = rng.integers(0, 2, size=(6, 4))
    t = t_int.astype(tdtype)
    loss, diff = sce(x, t, ignore_label=None)
    exp_loss, exp_diff = sigmoid_ref(x, t_int)
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1 / 6)


def test_integer_targets_with_ignore():
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    t = np.array([[0, 1, 255, 1], [255, 255, 0, 0], [1, 1, 1, 255]], dtype=np.uint8)
    loss, diff = sce(x, t, ignore_label=255, normalization="valid")
    exp_loss, exp_diff = sigmoid_ref(x, t, ignore_label=255, normalization="valid")
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    np.testing.assert_allclose(diff, exp_diff, rtol=1e-12, atol=1e-16)
    assert np.all(diff[t == 255] == 0)


@pytest.mark.parametrize("shape", [(9,), (4, 5), (3, 4, 2, 5), (2, 1, 1, 1), (1, 6)], ids=str)
def test_shapes(real_dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x, t = _inputs(rng, shape, real_dtype, scale=4.0)
    loss, diff = sce(x, t, normalization="full")
    exp_loss, exp_diff = sigmoid_ref(x, t, normalization="full")
    assert diff.shape == shape
    assert_loss_close(loss, exp_loss, real_dtype)
    assert_diff_close(diff, exp_diff, real_dtype, 1 / x.size)


@pytest.mark.parametrize("tshape", [(4, 2, 3), (4, 6, 1), (4, 3, 2)], ids=str)
def test_targets_with_other_shape_same_count(tshape):
    rng = np.random.default_rng(19)
    x = rng.normal(size=(4, 6))
    t = rng.uniform(size=tshape)
    loss, diff = sce(x, t)
    exp_loss, exp_diff = sigmoid_ref(x, t.reshape(x.shape))
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    assert diff.shape == x.shape
    np.testing.assert_allclose(diff, exp_diff, rtol=1e-12, atol=1e-16)


# ----------------------------------------------------------------------------------------------
# Infinities and NaN
# ----------------------------------------------------------------------------------------------

def test_infinite_logits_limits(real_dtype):
    x = np.array([np.inf, -np.inf], dtype=real_dtype)
    t = np.array([1.0, 0.0], dtype=real_dtype)
    loss, diff = sce(x, t, normalization="none")
    assert loss == 0.0
    np.testing.assert_array_equal(diff, [0.0, 0.0])


def test_infinite_logit_wrong_target_is_infinite(real_dtype):
    loss, diff = sce(np.array([np.inf], dtype=real_dtype), np.array([0.0], dtype=real_dtype))
    assert loss == math.inf
    assert diff[0] == 1.0
    loss, diff = sce(np.array([-np.inf], dtype=real_dtype), np.array([1.0], dtype=real_dtype))
    assert loss == math.inf
    assert diff[0] == -1.0


def test_large_finite_logits(real_dtype):
    big = 1e4 if real_dtype == np.float32 else 1e300
    x = np.array([big, -big, big, -big], dtype=real_dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0], dtype=real_dtype)
    loss, diff = sce(x, t, normalization="none")
    np.testing.assert_allclose(loss, 2 * float(big), rtol=1e-6)
    np.testing.assert_array_equal(diff, np.array([0.0, 0.0, 1.0, -1.0], dtype=real_dtype))


def test_confident_predictions_keep_relative_precision():
    x = np.array([40.0, -40.0, 20.0, -30.0])
    t = np.array([1.0, 0.0, 1.0, 0.0])
    loss, diff = sce(x, t, normalization="none")
    e = np.exp(-np.abs(x))
    np.testing.assert_allclose(diff, np.sign(-x) * e / (1 + e), rtol=1e-12)
    np.testing.assert_allclose(loss, np.sum(np.log1p(e)), rtol=1e-12)
    x32 = np.array([15.0, -15.0], dtype=np.float32)
    _, d32 = sce(x32, np.array([1.0, 0.0], dtype=np.float32), normalization="none")
    e = math.exp(-15.0)
    np.testing.assert_allclose(d32, [-e / (1 + e), e / (1 + e)], rtol=1e-5)


@pytest.mark.parametrize("where", ["scores", "targets"])
def test_nan_propagates(real_dtype, where):
    x = np.array([[0.5, np.nan if where == "scores" else 1.0, -0.3]], dtype=real_dtype)
    t = np.array([[0.2, np.nan if where == "targets" else 0.4, 0.9]], dtype=real_dtype)
    loss, diff = sce(x, t)
    assert math.isnan(loss)
    assert np.isnan(diff[0, 1])
    assert np.all(np.isfinite(diff[0, [0, 2]]))


# ----------------------------------------------------------------------------------------------
# dtypes and accuracy
# ----------------------------------------------------------------------------------------------

def test_float16_computed_in_float32():
    rng = np.random.default_rng(20)
    x, t = _inputs(rng, (16, 8), np.float16, scale=2.0)
    loss, diff = sce(x, t, loss_weight=3.0)
    assert diff.dtype == np.float16
    exp_loss, exp_diff = sigmoid_ref(x, t, loss_weight=3.0)
    assert_loss_close(loss, exp_loss, np.float16)
    assert_diff_close(diff, exp_diff, np.float16, 3.0 / 16)
    # Same as computing on the float32 copy and rounding the diff to float16.
    loss32, diff32 = sce(x.astype(np.float32), t.astype(np.float32), loss_weight=3.0)
    assert loss == loss32
    np.testing.assert_array_equal(diff, diff32.astype(np.float16))


def test_float32_sum_accuracy_large():
    """A float32 loss over millions of elements stays within ~1e-6 of the float64 sum."""
    rng = np.random.default_rng(21)
    n = 1 << 22
    x = rng.normal(size=(1, n)).astype(np.float32)
    t = rng.uniform(size=(1, n)).astype(np.float32)
    loss, _ = sce(x, t, normalization="none", diff=False)
    exact = float(np.sum(np.maximum(x.astype(np.float64), 0) - x.astype(np.float64) * t
                         + np.log1p(np.exp(-np.abs(x.astype(np.float64))))))
    np.testing.assert_allclose(loss, exact, rtol=2e-6)


# ----------------------------------------------------------------------------------------------
# Property tests
# ----------------------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from([np.float32, np.float64]),
    mode=st.sampled_from(MODES + ("Valid",)),
    ignore=st.sampled_from([None, -1, 0, 1]),
    lw=st.floats(-4, 4).filter(lambda v: v == 0 or abs(v) > 1e-3),
    scale=st.sampled_from([0.1, 1.0, 10.0, 60.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_reference(shape, dtype, mode, ignore, lw, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * scale).astype(dtype)
    t = rng.uniform(-1.5, 1.5, size=shape).astype(dtype)
    loss, diff = sce(x, t, ignore_label=ignore, normalization=mode, loss_weight=lw)
    exp_loss, exp_diff = sigmoid_ref(x, t, ignore_label=ignore, normalization=mode, loss_weight=lw)
    dt = compute_dtype(dtype)
    per_scale = float(np.sum(np.abs(x.astype(np.float64)))) + x.size
    assert_loss_close(loss, exp_loss, dt, atol=per_scale * (1e-14 if dt == np.float64 else 1e-6))
    assert_diff_close(diff, exp_diff, dt, lw)
