"""binary_cross_entropy and binary_cross_entropy_with_logits: values, gradients, reductions,
weight/pos_weight broadcasting, clamps, infinite logits, dtypes, outputs, errors, and PyTorch as a
second oracle."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import xentkit
from ref_binary_tf import (EPS12, REDUCTIONS, assert_array_close, assert_scalar_close,
                           bce_elementwise, bce_logits_elementwise, bce_logits_ref, bce_ref,
                           central_difference)

bce = xentkit.binary_cross_entropy
bcel = xentkit.binary_cross_entropy_with_logits

SENTINEL = -12345.5
SHAPES = [(), (1,), (7,), (5, 3), (2, 3, 4, 5), (0,), (3, 0), (2, 0, 4)]
DTYPES = (np.float16, np.float32, np.float64)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _probs(rng, shape, dtype, lo=0.02, hi=0.98):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def _targets(rng, shape, dtype):
    """Soft targets in [0, 1] with some exact 0s and 1s."""
    t = rng.uniform(size=shape)
    pick = rng.uniform(size=shape)
    t = np.where(pick < 0.25, 0.0, np.where(pick > 0.75, 1.0, t))
    return np.asarray(t).astype(dtype)


def _logits(rng, shape, dtype, scale=3.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def _check(result, expected, dtype, reduction, n, gscale=1.0):
    """Compares (loss, grad) with the reference; n = element count (for the gradient scale)."""
    loss, grad = result
    exp_loss, exp_grad = expected
    if reduction == "none":
        assert_array_close(loss, exp_loss, dtype, scale=1.0)
    else:
        assert_scalar_close(loss, exp_loss, dtype, atol=1e-300)
    scale = gscale / max(n, 1) if reduction == "mean" else gscale
    assert_array_close(grad, exp_grad, dtype, scale=scale)


def _sentinel_like(x, dtype=None):
    return np.full(np.shape(x), SENTINEL, dtype=dtype or x.dtype)


def _untouched(out):
    return bool(np.all(out == np.asarray(SENTINEL, dtype=out.dtype)))


# ----------------------------------------------------------------------------------------------
# Values and gradients against the reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_against_reference(shape, reduction, dtype):
    rng = _rng("bce", shape, reduction, np.dtype(dtype).name)
    p = _probs(rng, shape, dtype)
    t = _targets(rng, shape, dtype)
    result = bce(p, t, reduction=reduction, grad=True)
    expected = bce_ref(p, t, reduction=reduction)
    _check(result, expected, dtype, reduction, p.size, gscale=50.0)
    # grad=False returns the loss alone, the same value.
    alone = bce(p, t, reduction=reduction)
    if reduction == "none":
        np.testing.assert_array_equal(alone, result[0])
    else:
        assert alone == result[0] or (math.isnan(alone) and math.isnan(result[0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_logits_against_reference(shape, reduction, dtype):
    rng = _rng("bcel", shape, reduction, np.dtype(dtype).name)
    x = _logits(rng, shape, dtype)
    t = _targets(rng, shape, dtype)
    result = bcel(x, t, reduction=reduction, grad=True)
    expected = bce_logits_ref(x, t, reduction=reduction)
    _check(result, expected, dtype, reduction, x.size)
    alone = bcel(x, t, reduction=reduction)
    if reduction == "none":
        np.testing.assert_array_equal(alone, result[0])
    else:
        assert alone == result[0] or (math.isnan(alone) and math.isnan(result[0]))


@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_empty_reductions(fn):
    f = bce if fn == "bce" else bcel
    for shape in [(0,), (4, 0), (0, 3, 2)]:
        x = np.zeros(shape)
        t = np.zeros(shape)
        loss, grad = f(x, t, reduction="mean", grad=True)
        assert type(loss) is float and math.isnan(loss)
        assert grad.shape == shape and grad.dtype == np.float64
        loss, grad = f(x, t, reduction="sum", grad=True)
        assert type(loss) is float and loss == 0.0
        loss, grad = f(x, t, reduction="none", grad=True)
        assert isinstance(loss, np.ndarray) and loss.shape == shape and loss.dtype == np.float64


def test_result_types():
    rng = _rng("types")
    for dtype in DTYPES:
        p = _probs(rng, (3, 4), dtype)
        t = _targets(rng, (3, 4), dtype)
        for f, a in ((bce, p), (bcel, p - 0.5)):
            for reduction in ("mean", "sum"):
                loss = f(a, t, reduction=reduction)
                assert type(loss) is float
                loss, grad = f(a, t, reduction=reduction, grad=True)
                assert type(loss) is float
                assert type(grad) is np.ndarray and grad.dtype == dtype and grad.shape == (3, 4)
                assert grad.flags.c_contiguous
            loss = f(a, t, reduction="none")
            assert type(loss) is np.ndarray and loss.dtype == dtype and loss.shape == (3, 4)
        # 0-d input with "none": a 0-d array.
        loss = bce(p[0, :1].reshape(()), t[0, :1].reshape(()), reduction="none")
        assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype


def test_reduced_loss_is_rounded_to_input_dtype():
    """mean/sum: the float64 result rounded to the input dtype (float32/float16)."""
    rng = _rng("rounded")
    p64 = _probs(rng, (257,), np.float64)
    t64 = _targets(rng, (257,), np.float64)
    for dtype in (np.float32, np.float16):
        p = p64.astype(dtype)
        t = t64.astype(dtype)
        exp = bce_ref(p, t)[0]
        loss = bce(p, t)
        assert float(np.dtype(dtype).type(loss)) == loss
        assert abs(loss - exp) <= 2 * abs(float(np.dtype(dtype).type(exp)) - exp) + 1e-6 * exp
        x = (p64 * 6 - 3).astype(dtype)
        loss = bcel(x, t, reduction="sum")
        assert float(np.dtype(dtype).type(loss)) == loss
        np.testing.assert_allclose(loss, bce_logits_ref(x, t, reduction="sum")[0],
                                   rtol=2e-5 if dtype == np.float32 else 1e-3)


# ----------------------------------------------------------------------------------------------
# Reference numbers (frameworks.md section 8)
# ----------------------------------------------------------------------------------------------

P8 = [[0.6, 0.1], [0.3, 0.8]]
Y8 = [[0.0, 1.0], [1.0, 0.0]]


def test_section8_bce_float64():
    p, y = np.array(P8), np.array(Y8)
    loss, grad = bce(p, y, grad=True)
    assert loss == pytest.approx(1.5080716354070594, rel=1e-14)
    np.testing.assert_allclose(grad.ravel(), [0.625, -2.4999999999999996, -0.8333333333333333,
                                              1.2500000000000002], rtol=1e-14)
    assert bce(p, y, reduction="sum") == pytest.approx(6.032286541628237, rel=1e-14)
    np.testing.assert_allclose(bce(p, y, reduction="none").ravel(),
                               [0.916290731874155, 2.3025850929940455, 1.2039728043259361,
                                1.6094379124341005], rtol=1e-14)
    # weight (2,) scales columns; mean still divides by the element count.
    w = np.array([1.0, 2.0])
    per = np.array([0.916290731874155, 2.3025850929940455, 1.2039728043259361,
                    1.6094379124341005]).reshape(2, 2)
    assert bce(p, y, w) == pytest.approx((per * w).sum() / 4, rel=1e-14)


def test_section8_bce_float32():
    p, y = np.array(P8, np.float32), np.array(Y8, np.float32)
    loss, grad = bce(p, y, grad=True)
    assert loss == pytest.approx(1.5080716609954834, rel=2e-7)
    np.testing.assert_allclose(grad.ravel(), [0.6250000596046448, -2.5, -0.8333333134651184, 1.25],
                               rtol=2e-7)
    assert bce(p, y, reduction="sum") == pytest.approx(6.032286643981934, rel=2e-7)
    np.testing.assert_allclose(bce(p, y, reduction="none").ravel(),
                               [0.9162907600402832, 2.3025851249694824, 1.2039728164672852,
                                1.6094379425048828], rtol=2e-7)
    # 2.4860773087 is the float32 value of the float64 2.4860773867640957.
    assert bce(p, y, np.array([1, 2], np.float32)) == pytest.approx(2.4860773087, rel=2e-7)


def test_section8_bce_with_logits_float64():
    x, y = np.array(P8), np.array(Y8)
    loss, grad = bcel(x, y, grad=True)
    assert loss == pytest.approx(0.8518351302439404, rel=1e-14)
    np.testing.assert_allclose(grad.ravel(), [0.16141407655644885, -0.118755203130265,
                                              -0.10638937079708524, 0.17249362028190313],
                               rtol=1e-14)
    assert bcel(x, y, reduction="sum") == pytest.approx(3.4073405209757617, rel=1e-14)
    np.testing.assert_allclose(bcel(x, y, reduction="none").ravel(),
                               [1.0374879504858856, 0.6443966600735709, 0.5543552444685271,
                                1.1711006659477778], rtol=1e-14)
    assert bcel(x, y, pos_weight=np.array([1.0, 3.0])) == pytest.approx(1.1740334602807259,
                                                                        rel=1e-14)
    # weight [1, 2] on columns: the second column doubles, mean still over 4 elements.
    per = np.array([1.0374879504858856, 0.6443966600735709, 0.5543552444685271,
                    1.1711006659477778]).reshape(2, 2)
    assert bcel(x, y, np.array([1.0, 2.0])) == pytest.approx((per * [1, 2]).sum() / 4, rel=1e-14)


def test_section8_bce_with_logits_float32():
    x, y = np.array(P8, np.float32), np.array(Y8, np.float32)
    loss, grad = bcel(x, y, grad=True)
    assert loss == pytest.approx(0.8518351316452026, rel=2e-7)
    np.testing.assert_allclose(grad.ravel(), [0.16141407191753387, -0.11875520646572113,
                                              -0.1063893735408783, 0.17249362170696259],
                               rtol=5e-7)
    assert bcel(x, y, reduction="sum") == pytest.approx(3.4073405265808105, rel=2e-7)
    np.testing.assert_allclose(bcel(x, y, reduction="none").ravel(),
                               [1.0374879837036133, 0.6443966627120972, 0.5543552041053772,
                                1.1711006164550781], rtol=5e-7)
    assert bcel(x, y, pos_weight=np.array([1, 3], np.float32)) == pytest.approx(
        1.1740334033966064, rel=2e-7)


# ----------------------------------------------------------------------------------------------
# weight and pos_weight broadcasting
# ----------------------------------------------------------------------------------------------

BROADCASTS = [
    ((4, 3), (3,)),            # per column (last axis)
    ((2, 3, 4, 5), (3, 1, 1)),  # per channel of (N, C, H, W)
    ((4, 3), ()),              # scalar
    ((4, 3), (4, 3)),          # full shape
    ((4, 3), (4, 1)),          # per row
    ((2, 3, 4, 5), (5,)),
    ((2, 3, 4), (1, 3, 4)),
    ((2, 3, 4), (2, 1, 4)),    # not a single stride/period pattern
    ((2, 3, 4), (2, 3, 1)),
    ((7,), (1,)),
    ((), ()),
    ((0, 3), (3,)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, wshape", BROADCASTS, ids=str)
def test_bce_weight_broadcast(shape, wshape, reduction, real_dtype):
    rng = _rng("bce-w", shape, wshape, reduction, real_dtype.name)
    p = _probs(rng, shape, real_dtype)
    t = _targets(rng, shape, real_dtype)
    w = rng.uniform(0.0, 3.0, size=wshape).astype(real_dtype)
    result = bce(p, t, w, reduction=reduction, grad=True)
    expected = bce_ref(p, t, weight=w, reduction=reduction)
    _check(result, expected, real_dtype, reduction, p.size, gscale=150.0)
    # Same as passing the weight expanded to the full shape.
    full = np.array(np.broadcast_to(w, shape), order="C")
    again = bce(p, t, full, reduction=reduction, grad=True)
    np.testing.assert_allclose(np.asarray(again[0], np.float64),
                               np.asarray(result[0], np.float64), rtol=1e-14 if
                               real_dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, wshape", BROADCASTS, ids=str)
def test_bce_logits_weight_and_pos_weight_broadcast(shape, wshape, reduction, real_dtype):
    rng = _rng("bcel-w", shape, wshape, reduction, real_dtype.name)
    x = _logits(rng, shape, real_dtype)
    t = _targets(rng, shape, real_dtype)
    w = rng.uniform(0.0, 3.0, size=wshape).astype(real_dtype)
    pw = rng.uniform(0.2, 4.0, size=wshape).astype(real_dtype)
    for kwargs in ({"weight": w}, {"pos_weight": pw}, {"weight": w, "pos_weight": pw}):
        weight = kwargs.get("weight")
        result = bcel(x, t, weight, reduction=reduction, pos_weight=kwargs.get("pos_weight"),
                      grad=True)
        expected = bce_logits_ref(x, t, weight=weight, reduction=reduction,
                                  pos_weight=kwargs.get("pos_weight"))
        _check(result, expected, real_dtype, reduction, x.size, gscale=12.0)


def test_weight_and_pos_weight_independent_shapes():
    """weight and pos_weight may have different broadcast shapes."""
    rng = _rng("indep")
    x = _logits(rng, (2, 3, 4), np.float64)
    t = _targets(rng, (2, 3, 4), np.float64)
    w = rng.uniform(0.5, 2.0, size=(3, 1))
    pw = rng.uniform(0.5, 2.0, size=(4,))
    loss, grad = bcel(x, t, w, pos_weight=pw, reduction="sum", grad=True)
    exp_loss, exp_grad = bce_logits_ref(x, t, w, "sum", pw)
    assert_scalar_close(loss, exp_loss, np.float64)
    assert_array_close(grad, exp_grad, np.float64)


def test_weight_converted_to_compute_dtype():
    """A weight of another dtype does not change the result dtype; an integer weight is fine."""
    rng = _rng("wconv")
    p = _probs(rng, (5, 3), np.float32)
    t = _targets(rng, (5, 3), np.float32)
    w64 = np.array([1.0, 2.0, 3.0])
    loss = bce(p, t, w64, reduction="none")
    assert loss.dtype == np.float32
    assert_array_close(loss, bce_ref(p, t, w64, "none")[0], np.float32)
    loss_int = bce(p, t, np.array([1, 2, 3], dtype=np.int32), reduction="none")
    np.testing.assert_array_equal(loss_int, loss)
    x = (p - 0.5) * 4
    loss = bcel(x, t, w64, pos_weight=np.array([2.0, 1.0, 0.5]), reduction="none")
    assert loss.dtype == np.float32
    assert_array_close(loss, bce_logits_ref(x, t, w64, "none", np.array([2.0, 1.0, 0.5]))[0],
                       np.float32)


BAD_BROADCASTS = [
    ((4, 3), (2, 4, 3)),   # enlarges
    ((4, 3), (1, 4, 3)),   # adds an axis
    ((4, 3), (4,)),        # does not broadcast (trailing dim 3 vs 4)
    ((4, 3), (3, 4)),
    ((3,), (2, 3)),
    ((), (2,)),
    ((2, 3, 4, 5), (3,)),  # (C,) aligns with the last axis, not the channel axis
    ((4, 1), (4, 3)),      # would enlarge the last axis
]


@pytest.mark.parametrize("shape, wshape", BAD_BROADCASTS, ids=str)
def test_bad_weight_raises(shape, wshape):
    rng = _rng("badw", shape, wshape)
    p = _probs(rng, shape, np.float64)
    t = _targets(rng, shape, np.float64)
    w = np.ones(wshape)
    out = _sentinel_like(p)
    with pytest.raises(ValueError):
        bce(p, t, w, grad=out)
    assert _untouched(out)
    with pytest.raises(ValueError):
        bce(p, t, w, reduction="none")
    with pytest.raises(ValueError):
        bcel(p, t, w, grad=out)
    assert _untouched(out)
    with pytest.raises(ValueError):
        bcel(p, t, pos_weight=w, grad=out)
    assert _untouched(out)
    with pytest.raises(ValueError):
        bcel(p, t, pos_weight=w, reduction="sum")


# ----------------------------------------------------------------------------------------------
# binary_cross_entropy: clamps and range checks
# ----------------------------------------------------------------------------------------------

def test_bce_log_clamp_values(real_dtype):
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=real_dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.25, 0.75], dtype=real_dtype)
    loss = bce(p, t, reduction="none")
    np.testing.assert_array_equal(loss, np.array([100.0, 0.0, 100.0, 0.0, 25.0, 25.0],
                                                 dtype=real_dtype))
    assert not np.any(np.isnan(loss))
    assert bce(p, t, reduction="sum") == 250.0
    assert bce(p, t) == pytest.approx(250.0 / 6, rel=1e-7)


def test_bce_tiny_probabilities():
    """Only p < e^-100 reaches the clamp: p = 1e-40 gives -log p = 92.10..., p = 1e-300 100."""
    p = np.array([1e-40, 1e-300, 1 - 1e-16, 1e-40])
    t = np.array([1.0, 1.0, 0.0, 0.0])
    loss = bce(p, t, reduction="none")
    np.testing.assert_allclose(loss[:2], [-math.log(1e-40), 100.0], rtol=1e-14)
    np.testing.assert_allclose(loss[2], -math.log1p(-(1 - 1e-16)), rtol=1e-12)
    np.testing.assert_allclose(loss[3], 1e-40, rtol=1e-12)
    p32 = np.array([1e-40], dtype=np.float32)  # a float32 subnormal
    np.testing.assert_allclose(bce(p32, np.ones(1, np.float32), reduction="none"),
                               [-math.log(float(p32[0]))], rtol=1e-6)


def test_bce_log1p_precision():
    """log(1 - p) is evaluated without cancellation: p = 1e-10, t = 0 -> 1.00000000005e-10."""
    p = np.array([1e-10, 3e-13, 2e-8])
    t = np.zeros(3)
    np.testing.assert_allclose(bce(p, t, reduction="none"), -np.log1p(-p), rtol=1e-13)
    p32 = np.array([1e-8], dtype=np.float32)
    np.testing.assert_allclose(bce(p32, np.zeros(1, np.float32), reduction="none"),
                               [-math.log1p(-float(p32[0]))], rtol=1e-6)


def test_bce_gradient_floor_float64():
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1e-300, 1.0])
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.5])
    loss, grad = bce(p, t, reduction="none", grad=True)
    expected = np.array([-1.0 / EPS12, 0.0, 1.0 / EPS12, 0.0, -0.5 / EPS12,
                         (1e-300 - 1.0) / EPS12, 0.5 / EPS12])
    np.testing.assert_array_equal(grad[[1, 3]], 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-15)
    assert grad[0] == pytest.approx(-1000000003995.8029, rel=1e-15)
    # The floor is the float32 constant, not 1e-12 exactly.
    assert grad[0] != -1e12
    # sum: same gradient; mean: divided by the count.
    _, gs = bce(p, t, reduction="sum", grad=True)
    np.testing.assert_array_equal(gs, grad)
    _, gm = bce(p, t, reduction="mean", grad=True)
    np.testing.assert_allclose(gm, grad / p.size, rtol=1e-15)


def test_bce_gradient_floor_float32():
    p = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    t = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    _, grad = bce(p, t, reduction="sum", grad=True)
    assert grad.dtype == np.float32
    assert grad[0] == np.float32(-999999995904.0)
    assert grad[1] == np.float32(999999995904.0)
    assert grad[2] == 0.0


def test_bce_weighted_gradient_at_clamp():
    p = np.array([[0.0, 0.5], [1.0, 0.25]])
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = np.array([3.0, 0.5])
    loss, grad = bce(p, t, w, reduction="none", grad=True)
    np.testing.assert_allclose(loss, [[300.0, 0.5 * math.log(2)], [300.0, 0.5 * math.log(4)]],
                               rtol=1e-14)
    np.testing.assert_allclose(grad, [[-3.0 / EPS12, 0.5 * 0.5 / 0.25],
                                      [3.0 / EPS12, 0.5 * -0.75 / 0.1875]], rtol=1e-14)


def _just_outside(bad, dtype):
    """The named near-miss in `dtype`: the smallest negative value or the next value above 1."""
    if bad == "tiny-negative":
        return -np.finfo(dtype).smallest_subnormal
    if bad == "above-one":
        return np.nextafter(dtype(1), dtype(2))
    return bad


@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("bad", [-0.1, 1.1, np.nan, -np.inf, np.inf, "tiny-negative", "above-one"])
def test_bce_range_errors(real_dtype, which, bad):
    bad = _just_outside(bad, real_dtype.type)
    rng = _rng("range", which, bad)
    p = _probs(rng, (3, 5), real_dtype)
    t = _targets(rng, (3, 5), real_dtype)
    target = p if which == "input" else t
    target[2, 3] = bad
    saved_p, saved_t = p.copy(), t.copy()
    for reduction in REDUCTIONS:
        out = _sentinel_like(p)
        with pytest.raises(ValueError) as info:
            bce(p, t, reduction=reduction, grad=out)
        assert which in str(info.value)
        assert _untouched(out)
        with pytest.raises(ValueError):
            bce(p, t, reduction=reduction)
    # In place: the input is left as it was.
    with pytest.raises(ValueError):
        bce(p, t, grad=p)
    np.testing.assert_array_equal(p, saved_p)
    np.testing.assert_array_equal(t, saved_t)


def test_bce_range_error_large_input_nothing_written():
    rng = _rng("range-large")
    p = _probs(rng, (300, 700), np.float32)
    t = _targets(rng, (300, 700), np.float32)
    p[-1, -1] = 1.5
    out = _sentinel_like(p)
    with pytest.raises(ValueError):
        bce(p, t, grad=out, reduction="none")
    assert _untouched(out)
    p[-1, -1] = 0.5
    t[200, 1] = -0.5
    with pytest.raises(ValueError):
        bce(p, t, grad=out, reduction="mean")
    assert _untouched(out)


def test_bce_logits_targets_not_range_checked():
    x = np.array([0.5, -1.0, 2.0])
    t = np.array([2.0, -0.5, 1.5])
    loss, grad = bcel(x, t, reduction="none", grad=True)
    exp_loss, exp_grad = bce_logits_ref(x, t, reduction="none")
    assert_array_close(loss, exp_loss, np.float64)
    assert_array_close(grad, exp_grad, np.float64)
    assert loss[0] == pytest.approx(-0.0259, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits: large and infinite logits
# ----------------------------------------------------------------------------------------------

def test_bce_logits_infinite_limits(real_dtype):
    inf = np.inf
    x = np.array([inf, -inf, inf, -inf, inf, -inf, 1e4, -1e4], dtype=real_dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.25, 0.25, 0.0, 1.0], dtype=real_dtype)
    loss, grad = bcel(x, t, reduction="none", grad=True)
    np.testing.assert_array_equal(loss[:6], [0.0, 0.0, inf, inf, inf, inf])
    np.testing.assert_array_equal(grad[:6], [0.0, 0.0, 1.0, -1.0, 0.75, -0.25])
    np.testing.assert_allclose(loss[6:], [1e4, 1e4], rtol=1e-7)
    np.testing.assert_array_equal(grad[6:], [1.0, -1.0])
    assert bcel(x[:2], t[:2]) == 0.0
    assert bcel(x[:4], t[:4], reduction="sum") == inf
    # mean of the two zero-loss limits: gradients 0/count.
    _, g = bcel(x[:2], t[:2], grad=True)
    np.testing.assert_array_equal(g, [0.0, 0.0])


def test_bce_logits_infinite_limits_with_weights():
    inf = np.inf
    x = np.array([inf, -inf, inf, -inf, -inf, inf])
    t = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    w = np.array([2.0, 3.0, 5.0, 7.0, 0.5, 1.0])
    pw = np.array([4.0, 2.0, 3.0, 9.0, 0.25, 6.0])
    loss, grad = bcel(x, t, w, pos_weight=pw, reduction="none", grad=True)
    np.testing.assert_array_equal(loss, [inf, inf, 0.0, 0.0, inf, 0.0])
    # grad = w * (L * sigmoid(x) - pw * t), L = 1 + (pw - 1) * t
    np.testing.assert_array_equal(grad, [2.0, -6.0, 0.0, 0.0, -0.125, 0.0])
    exp_loss, exp_grad = bce_logits_ref(x, t, w, "none", pw)
    np.testing.assert_array_equal(loss, exp_loss)
    np.testing.assert_array_equal(grad, exp_grad)


def test_bce_logits_zero_weight_at_infinite_logit():
    """A term whose weight is exactly 0 adds nothing, even where the unweighted loss is inf."""
    x = np.array([np.inf, -np.inf, 0.3])
    t = np.array([0.0, 1.0, 0.5])
    w = np.array([0.0, 0.0, 1.0])
    loss, grad = bcel(x, t, w, reduction="none", grad=True)
    np.testing.assert_array_equal(loss[:2], [0.0, 0.0])
    np.testing.assert_array_equal(grad[:2], [0.0, 0.0])
    assert math.isfinite(bcel(x, t, w, reduction="sum"))


def test_bce_logits_nan_propagates():
    x = np.array([0.5, np.nan, -1.0])
    t = np.array([1.0, 0.0, 0.5])
    loss, grad = bcel(x, t, reduction="none", grad=True)
    assert math.isnan(loss[1]) and math.isnan(grad[1])
    assert np.isfinite(loss[[0, 2]]).all() and np.isfinite(grad[[0, 2]]).all()
    assert math.isnan(bcel(x, t))
    t[1] = np.nan
    x[1] = 0.0
    assert math.isnan(bcel(x, t, reduction="sum"))


def test_bce_logits_large_logits_keep_relative_precision():
    """softplus(-x) for large x with t = 1: log1p(exp(-x)), not 0."""
    x = np.array([40.0, 700.0, 30.0])
    t = np.array([1.0, 1.0, 1.0])
    loss = bcel(x, t, reduction="none")
    np.testing.assert_allclose(loss, np.log1p(np.exp(-x)), rtol=1e-13)
    assert np.all(loss > 0)


# ----------------------------------------------------------------------------------------------
# Finite differences (float64)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_finite_differences(reduction):
    rng = _rng("fd-bce", reduction)
    p = _probs(rng, (3, 4), np.float64, 0.1, 0.9)
    t = _targets(rng, (3, 4), np.float64)
    w = rng.uniform(0.5, 2.0, size=(4,))

    def objective(a):
        v = bce(a, t, w, reduction=reduction)
        return float(np.sum(v))

    _, grad = bce(p, t, w, reduction=reduction, grad=True)
    numeric = central_difference(objective, p.copy(), 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 1e-2


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_logits_finite_differences(reduction):
    rng = _rng("fd-bcel", reduction)
    x = _logits(rng, (2, 3, 4), np.float64)
    t = _targets(rng, (2, 3, 4), np.float64)
    w = rng.uniform(0.5, 2.0, size=(3, 1))
    pw = rng.uniform(0.5, 3.0, size=(4,))

    def objective(a):
        return float(np.sum(bcel(a, t, w, reduction=reduction, pos_weight=pw)))

    _, grad = bcel(x, t, w, reduction=reduction, pos_weight=pw, grad=True)
    numeric = central_difference(objective, x.copy(), 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 1e-2


# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("in_dt, t_dt, out_dt", [
    (np.float32, np.float64, np.float64),
    (np.float64, np.float32, np.float64),
    (np.float16, np.float32, np.float32),
    (np.float16, np.float64, np.float64),
    (np.float32, np.float16, np.float32),
], ids=lambda d: np.dtype(d).name)
def test_dtype_promotion(fn, in_dt, t_dt, out_dt):
    """A floating target of another dtype promotes like np.result_type (PyTorch's rule)."""
    rng = _rng("promote", fn, in_dt, t_dt)
    f, ref = (bce, bce_ref) if fn == "bce" else (bcel, bce_logits_ref)
    a = _probs(rng, (4, 5), in_dt) if fn == "bce" else _logits(rng, (4, 5), in_dt)
    t = _targets(rng, (4, 5), np.float64)
    t[0, 0] = 0.1  # not representable in float32: the promoted result sees the float64 value
    t = t.astype(t_dt)
    out_dt = np.dtype(out_dt)
    loss = f(a, t, reduction="none")
    assert loss.dtype == out_dt
    exp_none = ref(a, t, reduction="none")[0]
    assert_array_close(loss, exp_none, out_dt)
    mean, grad = f(a, t, grad=True)
    assert_scalar_close(mean, ref(a, t)[0], out_dt)
    assert grad.shape == a.shape
    assert grad.dtype == np.dtype(in_dt)
    exp_grad = ref(a, t)[1]
    assert_array_close(grad, exp_grad, np.dtype(in_dt), scale=60.0 / a.size)


@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_promoted_gradient_into_input(fn):
    """float32 input + float64 target: the gradient has the input's dtype, so it can be written
    into a float32 array, or in place into the input."""
    rng = _rng("promote-inplace", fn)
    f, ref = (bce, bce_ref) if fn == "bce" else (bcel, bce_logits_ref)
    a = _probs(rng, (3, 4), np.float32)
    t = _targets(rng, (3, 4), np.float64)
    exp_loss, exp_grad = ref(a, t, reduction="sum")
    out = np.zeros((3, 4), np.float32)
    loss, got = f(a, t, reduction="sum", grad=out)
    assert got is out
    assert_scalar_close(loss, exp_loss, np.float64)
    assert_array_close(out, exp_grad, np.float32, scale=10.0)
    loss, got = f(a, t, reduction="sum", grad=a)
    assert got is a
    assert_array_close(a, exp_grad, np.float32, scale=10.0)


@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("tdtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_target_raises_type_error(fn, tdtype):
    f = bce if fn == "bce" else bcel
    a = np.full((2, 3), 0.5)
    out = _sentinel_like(a)
    with pytest.raises(TypeError):
        f(a, np.ones((2, 3), dtype=tdtype), grad=out)
    assert _untouched(out)


@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("xdtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_unsupported_input_dtype_raises_type_error(fn, xdtype):
    f = bce if fn == "bce" else bcel
    with pytest.raises(TypeError):
        f(np.ones((2, 3), dtype=xdtype), np.ones((2, 3)))


def test_float16_inputs():
    rng = _rng("f16")
    p = _probs(rng, (6, 7), np.float16, 0.05, 0.95)
    t = _targets(rng, (6, 7), np.float16)
    loss, grad = bce(p, t, reduction="none", grad=True)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    exp_loss, exp_grad = bce_ref(p, t, reduction="none")
    np.testing.assert_allclose(loss.astype(np.float64), exp_loss, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(grad.astype(np.float64), exp_grad, rtol=1e-3, atol=1e-3)
    x = (p.astype(np.float32) * 8 - 4).astype(np.float16)
    loss, grad = bcel(x, t, np.array([2.0], np.float16), reduction="sum", grad=True)
    assert grad.dtype == np.float16
    exp = bce_logits_ref(x, t, np.array([2.0]), "sum")
    assert loss == pytest.approx(exp[0], rel=1e-3)
    assert float(np.float16(loss)) == loss
    np.testing.assert_allclose(grad.astype(np.float64), exp[1], rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Outputs: grad=<array>, in place, bad outputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_into_array_and_in_place(fn, reduction, real_dtype):
    rng = _rng("out", fn, reduction, real_dtype.name)
    f = bce if fn == "bce" else bcel
    a = _probs(rng, (4, 3, 2), real_dtype) if fn == "bce" else _logits(rng, (4, 3, 2), real_dtype)
    t = _targets(rng, (4, 3, 2), real_dtype)
    w = rng.uniform(0.5, 2, size=(3, 1)).astype(real_dtype)
    want_loss, want_grad = f(a, t, w, reduction=reduction, grad=True)
    out = _sentinel_like(a)
    loss, got = f(a, t, w, reduction=reduction, grad=out)
    assert got is out
    np.testing.assert_array_equal(out, want_grad)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(want_loss))
    saved_t = t.copy()
    loss, got = f(a, t, w, reduction=reduction, grad=a)
    assert got is a
    np.testing.assert_array_equal(a, want_grad)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(want_loss))
    np.testing.assert_array_equal(t, saved_t)


def _bad_outputs(shape, dtype):
    read_only = np.zeros(shape, dtype=dtype)
    read_only.setflags(write=False)
    other = np.float32 if np.dtype(dtype) == np.float64 else np.float64
    wide = np.zeros(shape[:-1] + (shape[-1] * 2,), dtype=dtype)
    return {
        "wrong-shape": np.zeros(shape[::-1], dtype=dtype),
        "flat": np.zeros(shape, dtype=dtype).reshape(-1),
        "wrong-dtype": np.zeros(shape, dtype=other),
        "non-contiguous": wide[..., ::2],
        "read-only": read_only,
    }


@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("kind", ["wrong-shape", "flat", "wrong-dtype", "non-contiguous",
                                  "read-only"])
def test_bad_grad_output_raises(fn, kind, real_dtype):
    f = bce if fn == "bce" else bcel
    rng = _rng("badout", fn, kind)
    a = _probs(rng, (4, 3), real_dtype)
    t = _targets(rng, (4, 3), real_dtype)
    out = _bad_outputs(a.shape, real_dtype)[kind]
    before = out.copy()
    with pytest.raises((ValueError, TypeError), match="grad"):
        f(a, t, grad=out)
    np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_grad_overlapping_other_inputs_raises(fn):
    f = bce if fn == "bce" else bcel
    rng = _rng("overlap", fn)
    a = _probs(rng, (4, 3), np.float64)
    t = _targets(rng, (4, 3), np.float64)
    w = np.ones((4, 3))
    saved_t = t.copy()
    with pytest.raises(ValueError):
        f(a, t, grad=t)
    np.testing.assert_array_equal(t, saved_t)
    with pytest.raises(ValueError):
        f(a, t, w, grad=w)
    assert np.all(w == 1.0)
    if fn == "bcel":
        with pytest.raises(ValueError):
            f(a, t, pos_weight=w, grad=w)
        assert np.all(w == 1.0)
    # A broadcast weight stored inside the gradient's buffer: it would be overwritten while read.
    buf = np.zeros(12)
    buf[:3] = [0.5, 1.5, 2.0]
    want = f(a, t, buf[:3].copy())
    with pytest.raises(ValueError):
        f(a, t, buf[:3], grad=buf.reshape(4, 3))
    np.testing.assert_array_equal(buf[:3], [0.5, 1.5, 2.0])
    assert math.isfinite(want)


# ----------------------------------------------------------------------------------------------
# Inputs: not modified, non-contiguous, shapes, reductions
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_inputs_not_modified(fn):
    f = bce if fn == "bce" else bcel
    rng = _rng("unmodified", fn)
    a = _probs(rng, (5, 4), np.float32)
    t = _targets(rng, (5, 4), np.float32)
    w = rng.uniform(size=(4,)).astype(np.float32)
    saved = [a.copy(), t.copy(), w.copy()]
    for reduction in REDUCTIONS:
        kwargs = {"pos_weight": w} if fn == "bcel" else {}
        f(a, t, w, reduction=reduction, grad=True, **kwargs)
    for arr, s in zip((a, t, w), saved):
        np.testing.assert_array_equal(arr, s)


@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_non_contiguous_inputs(fn):
    f = bce if fn == "bce" else bcel
    rng = _rng("strided", fn)
    base_a = _probs(rng, (6, 10), np.float64)
    base_t = _targets(rng, (10, 6), np.float64)
    a = base_a[:, ::2]
    t = base_t.T[:, 1::2]
    w = rng.uniform(size=(10,))[::2]
    loss, grad = f(a, t, w, reduction="none", grad=True)
    want = f(np.ascontiguousarray(a), np.ascontiguousarray(t), np.ascontiguousarray(w),
             reduction="none", grad=True)
    np.testing.assert_array_equal(loss, want[0])
    np.testing.assert_array_equal(grad, want[1])
    assert grad.flags.c_contiguous


@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("xshape, tshape", [((2,), (2, 1)), ((4, 3), (3, 4)), ((4, 3), (12,)),
                                            ((3,), ()), ((), (1,)), ((2, 3), (1, 3))], ids=str)
def test_shape_mismatch_raises(fn, xshape, tshape):
    f = bce if fn == "bce" else bcel
    a = np.full(xshape, 0.5)
    t = np.full(tshape, 0.5)
    with pytest.raises(ValueError) as info:
        f(a, t)
    message = str(info.value)
    assert str(xshape) in message and str(tshape) in message


@pytest.mark.parametrize("fn", ["bce", "bcel"])
@pytest.mark.parametrize("reduction", ["avg", "Mean", "SUM", "", "elementwise_mean"])
def test_bad_reduction_raises(fn, reduction):
    f = bce if fn == "bce" else bcel
    a = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="reduction"):
        f(a, a.copy(), reduction=reduction)


def test_weight_is_third_positional_rest_keyword_only():
    a = np.full((2, 2), 0.5)
    t = np.array([[0.0, 1.0], [1.0, 1.0]])
    w = np.array([1.0, 3.0])
    assert bce(a, t, w) == pytest.approx(bce_ref(a, t, w)[0], rel=1e-14)
    with pytest.raises(TypeError):
        bce(a, t, w, "sum")
    with pytest.raises(TypeError):
        bcel(a, t, w, "sum")


def test_zero_weights_mean_is_zero_not_nan():
    """mean divides by the element count whatever the weights: all-zero weights give 0."""
    rng = _rng("zero-w")
    p = _probs(rng, (4, 3), np.float64)
    t = _targets(rng, (4, 3), np.float64)
    for f, a in ((bce, p), (bcel, p * 4 - 2)):
        loss, grad = f(a, t, np.zeros(3), grad=True)
        assert loss == 0.0
        np.testing.assert_array_equal(grad, 0.0)


def test_non_native_byte_order():
    rng = _rng("byteorder")
    p = _probs(rng, (5, 4), np.float64)
    t = _targets(rng, (5, 4), np.float64)
    w = rng.uniform(size=(4,))
    for f, a in ((bce, p), (bcel, p * 4 - 2)):
        want_loss, want_grad = f(a, t, w, reduction="none", grad=True)
        loss, grad = f(a.astype(">f8"), t.astype(">f8"), w.astype(">f4"), reduction="none",
                       grad=True)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6)
        np.testing.assert_array_equal(f(a.astype(">f8"), t.astype(">f8"), reduction="none"),
                                      f(a, t, reduction="none"))


@pytest.mark.parametrize("fn", ["bce", "bcel"])
def test_thread_count_does_not_change_results(fn, restore_threads):
    f = bce if fn == "bce" else bcel
    rng = _rng("threads", fn)
    a = _probs(rng, (600, 1000), np.float32)
    if fn == "bcel":
        a = (a * 8 - 4).astype(np.float32)
    t = _targets(rng, (600, 1000), np.float32)
    w = rng.uniform(size=(1000,)).astype(np.float32)
    results = []
    for n in (1, 3, 8):
        xentkit.set_num_threads(n)
        results.append((f(a, t, w, grad=True), f(a, t, reduction="sum"),
                        f(a, t, reduction="none")))
    for (mean_g, total, per) in results[1:]:
        assert mean_g[0] == results[0][0][0]
        np.testing.assert_array_equal(mean_g[1], results[0][0][1])
        assert total == results[0][1]
        np.testing.assert_array_equal(per, results[0][2])


def test_float32_large_sum_accuracy():
    """A float32 loss over many elements stays within 1e-6 of the float64 result of the same
    values (sums are accumulated in double)."""
    rng = _rng("large-sum")
    n = 2_000_000
    x = (rng.normal(size=n) * 2).astype(np.float32)
    t = rng.uniform(size=n).astype(np.float32)
    exp_per = bce_logits_elementwise(x, t)[0]
    assert bcel(x, t) == pytest.approx(exp_per.sum() / n, rel=1e-6)
    assert bcel(x, t, reduction="sum") == pytest.approx(exp_per.sum(), rel=1e-6)
    p = rng.uniform(0.01, 0.99, size=n).astype(np.float32)
    assert bce(p, t) == pytest.approx(bce_elementwise(p, t)[0].sum() / n, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# PyTorch as a second oracle
# ----------------------------------------------------------------------------------------------

TORCH_CASES = [
    ((7,), None),
    ((5, 3), None),
    ((5, 3), (3,)),
    ((2, 3, 4, 5), (3, 1, 1)),
    ((2, 3, 4, 5), ()),
    ((4, 3), (4, 1)),
    ((2, 3, 4), (2, 3, 4)),
    ((), None),
    ((0, 3), (3,)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, wshape", TORCH_CASES, ids=str)
def test_bce_against_torch(shape, wshape, reduction, real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-bce", shape, wshape, reduction, real_dtype.name)
    p = rng.uniform(0.0, 1.0, size=shape).astype(real_dtype)
    t = _targets(rng, shape, real_dtype)
    w = None if wshape is None else rng.uniform(0, 2, size=wshape).astype(real_dtype)
    loss, grad = bce(p, t, w, reduction=reduction, grad=True)
    tp = torch.tensor(p, requires_grad=True)
    tl = F.binary_cross_entropy(tp, torch.tensor(t), None if w is None else torch.tensor(w),
                                reduction=reduction)
    tl.sum().backward()
    _compare_torch(loss, grad, tl, tp.grad, real_dtype, reduction, p.size)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, wshape", TORCH_CASES, ids=str)
def test_bce_logits_against_torch(shape, wshape, reduction, real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-bcel", shape, wshape, reduction, real_dtype.name)
    x = _logits(rng, shape, real_dtype, scale=5.0)
    t = _targets(rng, shape, real_dtype)
    w = None if wshape is None else rng.uniform(0, 2, size=wshape).astype(real_dtype)
    pw = None if wshape is None else rng.uniform(0.2, 5, size=wshape).astype(real_dtype)
    for pos in (None, pw):
        loss, grad = bcel(x, t, w, reduction=reduction, pos_weight=pos, grad=True)
        tx = torch.tensor(x, requires_grad=True)
        tl = F.binary_cross_entropy_with_logits(
            tx, torch.tensor(t), None if w is None else torch.tensor(w), reduction=reduction,
            pos_weight=None if pos is None else torch.tensor(pos))
        tl.sum().backward()
        _compare_torch(loss, grad, tl, tx.grad, real_dtype, reduction, x.size)


def _compare_torch(loss, grad, tl, tgrad, dtype, reduction, n):
    dtype = np.dtype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    tgrad = tgrad.numpy().astype(np.float64)
    if reduction == "none":
        exp = tl.detach().numpy().astype(np.float64)
        assert loss.dtype == dtype and loss.shape == exp.shape
        np.testing.assert_allclose(loss.astype(np.float64), exp, rtol=rtol,
                                   atol=1e-14 if dtype == np.float64 else 1e-6)
    else:
        exp = float(tl.detach())
        if math.isnan(exp):
            assert math.isnan(loss)
        else:
            np.testing.assert_allclose(loss, exp, rtol=rtol, atol=1e-300)
    scale = np.abs(tgrad).max() if tgrad.size else 1.0
    np.testing.assert_allclose(grad.astype(np.float64), tgrad, rtol=rtol,
                               atol=(1e-13 if dtype == np.float64 else 1e-6) * scale)


def test_bce_clamps_against_torch(real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    p = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1e-30, 0.5], dtype=real_dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.6, 1.0, 0.5], dtype=real_dtype)
    for reduction in REDUCTIONS:
        loss, grad = bce(p, t, reduction=reduction, grad=True)
        tp = torch.tensor(p, requires_grad=True)
        tl = F.binary_cross_entropy(tp, torch.tensor(t), reduction=reduction)
        tl.sum().backward()
        np.testing.assert_allclose(np.asarray(loss, np.float64),
                                   tl.detach().numpy().astype(np.float64),
                                   rtol=1e-12 if real_dtype == np.float64 else 1e-6)
        np.testing.assert_allclose(grad.astype(np.float64), tp.grad.numpy().astype(np.float64),
                                   rtol=1e-12 if real_dtype == np.float64 else 1e-6)


def test_bce_logits_large_finite_against_torch(real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.array([1e4, -1e4, 50.0, -50.0, 80.0, -80.0, 1e4, -1e4], dtype=real_dtype)
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.7, 0.2, 1.0, 0.0], dtype=real_dtype)
    pw = np.array([2.0], dtype=real_dtype)
    for pos in (None, pw):
        loss, grad = bcel(x, t, reduction="none", pos_weight=pos, grad=True)
        tx = torch.tensor(x, requires_grad=True)
        tl = F.binary_cross_entropy_with_logits(
            tx, torch.tensor(t), reduction="none",
            pos_weight=None if pos is None else torch.tensor(pos))
        tl.sum().backward()
        rtol = 1e-12 if real_dtype == np.float64 else 1e-6
        # (x = -50, t = 0 cancels to 0 in PyTorch's form; the true value is 2e-22.)
        np.testing.assert_allclose(loss.astype(np.float64),
                                   tl.detach().numpy().astype(np.float64), rtol=rtol,
                                   atol=1e-13 if real_dtype == np.float64 else 1e-5)
        np.testing.assert_allclose(grad.astype(np.float64), tx.grad.numpy().astype(np.float64),
                                   rtol=rtol, atol=1e-15)


def test_promotion_against_torch():
    """float32 logits + float64 targets: a float64 loss, a float32 gradient (as autograd)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-promote")
    a = _logits(rng, (6, 5), np.float32)
    t = _targets(rng, (6, 5), np.float64)
    ta = torch.tensor(a, requires_grad=True)
    tl = F.binary_cross_entropy_with_logits(ta, torch.tensor(t))
    tl.backward()
    assert tl.dtype == torch.float64
    loss, grad = bcel(a, t, grad=True)
    # PyTorch evaluates log-sigmoid of the float32 logits in float32 before promoting; xentkit
    # computes in float64 throughout (checked to 1e-12 against the reference elsewhere).
    np.testing.assert_allclose(loss, float(tl.detach()), rtol=1e-6)
    assert grad.dtype == np.float32 and ta.grad.dtype == torch.float32
    # Its float32 sigmoid(x) - t cancels: an absolute error of a float32 ulp of the scale.
    scale = float(np.abs(ta.grad.numpy()).max())
    np.testing.assert_allclose(grad, ta.grad.numpy(), rtol=1e-6, atol=2e-6 * scale)
