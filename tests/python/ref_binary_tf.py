"""Float64 NumPy references for the binary (PyTorch-style) and TensorFlow-style cross entropies,
written from the formulas of the contract.

binary_cross_entropy (probabilities p, targets t, weight w), per element:
    l = -w * (t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))
    dl/dp = w * (p - t) / max(p * (1 - p), EPS12),   EPS12 = float32(1e-12) = 9.999999960041972e-13
binary_cross_entropy_with_logits (logits x, pos_weight pw), with L = 1 + (pw - 1) * t:
    l = w * ((1 - t) * x + L * softplus(-x))
    dl/dx = w * (L * sigmoid(x) - pw * t)
    infinite x: the limit of l (0 where its coefficient is exactly 0, never 0 * inf = NaN).
sigmoid_cross_entropy_with_logits: the same with w = pw = 1, no reduction.
softmax_cross_entropy_with_logits (labels z, logits x, class axis a), per row:
    l = -sum_c z_c * log softmax(x)_c          (terms with z_c == 0 add nothing)
    dl/dx = rowsum(z) * softmax(x) - z          (the true derivative)
    a row holding +inf logits: the +inf entries share the probability mass equally.
sparse_softmax_cross_entropy_with_logits: z = onehot(label) over the last axis.

Reductions: "none" (the array), "sum", "mean" (sum / element count; NaN over no elements). The
gradient of "none" is that of the sum of the per-element losses.
"""

from __future__ import annotations

import math

import numpy as np

from references import central_difference  # noqa: F401  (re-exported)
from ref_softmax_family import check_classes

EPS12 = float(np.float32(1e-12))  # 9.999999960041972e-13
LOG_CLAMP = -100.0
REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------------------------------------
# Utilities
# ----------------------------------------------------------------------------------------------

def f64(a):
    return np.asarray(a, dtype=np.float64)


def compute_dtype(dtype):
    """float16 is computed in float32; float32/float64 in themselves."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def broadcast_weight(w, shape):
    """w broadcast against an array of `shape` on the trailing dimensions (NumPy rules); a w that
    would change the shape (enlarge it or add axes) is an error, as in PyTorch."""
    if w is None:
        return np.ones(shape, dtype=np.float64)
    w = f64(w)
    out = np.broadcast_shapes(w.shape, tuple(shape))  # raises ValueError when incompatible
    if out != tuple(shape):
        raise ValueError(f"reference: weight {w.shape} enlarges {tuple(shape)} to {out}")
    return np.broadcast_to(w, shape)


def reduce(per, grad_elem, reduction):
    """(loss, grad) from per-element losses and the per-element gradient of their sum."""
    n = per.size
    if reduction == "none":
        return per, grad_elem
    if reduction == "sum":
        return float(per.sum()), grad_elem
    if reduction == "mean":
        if n == 0:
            return math.nan, np.zeros_like(grad_elem)
        return float(per.sum()) / n, grad_elem / n
    raise ValueError(reduction)


def stable_sigmoid(x):
    x = f64(x)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    out[np.isnan(x)] = np.nan
    return out


def softplus_neg(x):
    """softplus(-x) = log(1 + exp(-x)) = max(-x, 0) + log1p(exp(-|x|)), exact for large |x|."""
    x = f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum(-x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _times_inf(coef, sign):
    """coef * (sign * inf), with 0 * inf taken as 0."""
    with np.errstate(invalid="ignore"):
        return np.where(coef == 0, 0.0, coef * (sign * np.inf))


# ----------------------------------------------------------------------------------------------
# PyTorch: binary_cross_entropy and binary_cross_entropy_with_logits
# ----------------------------------------------------------------------------------------------

def bce_elementwise(p, t, w=None):
    """(per-element loss, per-element gradient) of binary_cross_entropy in float64."""
    p, t = f64(p), f64(t)
    w = broadcast_weight(w, p.shape)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), LOG_CLAMP)
        log_q = np.maximum(np.log1p(-p), LOG_CLAMP)
    per = -w * (t * log_p + (1.0 - t) * log_q)
    grad = w * (p - t) / np.maximum(p * (1.0 - p), EPS12)
    return per, grad


def bce_ref(p, t, weight=None, reduction="mean"):
    per, grad = bce_elementwise(p, t, weight)
    return reduce(per, grad, reduction)


def bce_logits_elementwise(x, t, w=None, pos_weight=None):
    """(per-element loss, per-element gradient) of binary_cross_entropy_with_logits in float64,
    with the limits at infinite logits."""
    x, t = f64(x), f64(t)
    w = broadcast_weight(w, x.shape)
    pw = broadcast_weight(pos_weight, x.shape)
    big = 1.0 + (pw - 1.0) * t
    finite = np.isfinite(x) | np.isnan(x)
    xs = np.where(finite, x, 0.0)
    per = (1.0 - t) * xs + big * softplus_neg(xs)
    # x = +inf: softplus(-x) = 0, l = (1 - t) * inf.  x = -inf: l = pw * t * inf
    # ((1 - t) * x + L * (-x) = -pw * t * x, softplus(x) = 0).
    per = np.where(x == np.inf, _times_inf(1.0 - t, 1.0), per)
    per = np.where(x == -np.inf, _times_inf(pw * t, 1.0), per)
    with np.errstate(invalid="ignore"):
        per = np.where(w == 0, 0.0, w * per)
        per = np.where(np.isnan(x), np.nan, per)
    grad = w * (big * stable_sigmoid(x) - pw * t)
    return per, grad


def bce_logits_ref(x, t, weight=None, reduction="mean", pos_weight=None):
    per, grad = bce_logits_elementwise(x, t, weight, pos_weight)
    return reduce(per, grad, reduction)


# ----------------------------------------------------------------------------------------------
# TensorFlow
# ----------------------------------------------------------------------------------------------

def sigmoid_tf_ref(labels, logits):
    """(loss, grad) of sigmoid_cross_entropy_with_logits: both of the logits' shape."""
    return bce_logits_elementwise(logits, labels)


def _log_softmax_last(x):
    """log softmax over the last axis, float64; +inf entries share the mass."""
    x = f64(x)
    pinf = x == np.inf
    npinf = pinf.sum(axis=-1, keepdims=True)
    safe = np.where(npinf > 0, np.where(pinf, 0.0, -np.inf), x)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.max(safe, axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,))
        m = np.where(np.isfinite(m), m, 0.0)
        z = safe - m
        lse = np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return z - lse


def softmax_tf_ref(labels, logits, axis=-1):
    """(loss, grad) of softmax_cross_entropy_with_logits: loss of the logits' shape without the
    class axis, grad of the logits' shape (rowsum(z) * softmax - z)."""
    x = f64(logits)
    z = f64(labels)
    ax = axis % x.ndim
    xm = np.moveaxis(x, ax, -1)
    zm = np.moveaxis(z, ax, -1)
    check_classes(math.prod(xm.shape[:-1]), xm.shape[-1])
    lp = _log_softmax_last(xm)
    with np.errstate(invalid="ignore"):
        terms = np.where(zm == 0, 0.0, zm * lp)
    loss = -terms.sum(axis=-1)
    p = np.exp(lp)
    grad = zm.sum(axis=-1, keepdims=True) * p - zm
    return loss, np.moveaxis(grad, -1, ax)


def sparse_tf_ref(labels, logits):
    """(loss, grad) of sparse_softmax_cross_entropy_with_logits (class axis last). The label entry
    p - 1 of the gradient is formed from the sum of the other classes' exponentials, so that it
    keeps its relative precision for confident predictions."""
    x = f64(logits)
    y = np.asarray(labels).astype(np.int64)
    c = x.shape[-1]
    if np.any((y < 0) | (y >= c)):
        raise IndexError("reference: label out of range")
    lp = _log_softmax_last(x)
    picked = np.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
    loss = -picked
    p = np.exp(lp)
    onehot = np.zeros_like(x)
    np.put_along_axis(onehot, y[..., None], 1.0, axis=-1)
    grad = p - onehot
    # Precise label entry for finite rows: -(sum of the others) / (sum of all).
    if np.all(np.isfinite(x)) and x.size:
        m = x.max(axis=-1, keepdims=True)
        e = np.exp(x - m)
        others = np.where(onehot.astype(bool), 0.0, e).sum(axis=-1)
        precise = -others / e.sum(axis=-1)
        np.put_along_axis(grad, y[..., None], precise[..., None], axis=-1)
        # -log p[y] = log1p(others / e[y]) is exact where the label is the top class.
        ey = np.take_along_axis(e, y[..., None], axis=-1)[..., 0]
        loss = np.where(ey == 1.0, np.log1p(others / ey), loss)
    return loss, grad


# ----------------------------------------------------------------------------------------------
# Finite differences and comparisons
# ----------------------------------------------------------------------------------------------



LOSS_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3}
GRAD_ATOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-6, np.dtype(np.float16): 2e-3}


def assert_scalar_close(actual, expected, dtype, atol=0.0):
    """A reduced loss: a Python float, the float64 result rounded to `dtype`."""
    dtype = np.dtype(dtype)
    assert type(actual) is float, type(actual)
    if math.isnan(expected):
        assert math.isnan(actual)
        return
    # The value is representable in the result dtype (it was rounded to it).
    if np.isfinite(actual):
        assert float(dtype.type(actual)) == actual
    np.testing.assert_allclose(actual, expected, rtol=LOSS_RTOL[dtype], atol=atol)


def assert_array_close(actual, expected, dtype, scale=1.0, rtol=None):
    """Elementwise comparison; `scale` sets the absolute floor (values may cancel below it)."""
    dtype = np.dtype(dtype)
    expected = f64(expected)
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    rtol = LOSS_RTOL[dtype] if rtol is None else rtol
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                               atol=GRAD_ATOL[dtype] * abs(scale))
