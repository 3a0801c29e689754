"""Float64 NumPy references for the softmax family (log_softmax, softmax, cross_entropy, nll_loss),
written from the formulas, with their analytic gradients.

Layout (as torch.nn.functional): the class dimension is 1, or 0 for a 1-D input. Internally every
input is viewed as (N, C, L) with L = d1*...*dK (a 1-D input is N = L = 1) and every class-index
target as (N, L).

Notation: lp = log_softmax(x) over the classes, s = exp(lp), w = class weights (ones when absent),
W = sum_c w_c, eps = label smoothing (negative values count as 0).

Class-index targets, per non-ignored position i with label y_i:
    l_i = (1 - eps) * w[y_i] * (-lp_i[y_i]) + (eps / C) * sum_c w_c * (-lp_i[c]);  ignored: l_i = 0
    mean = sum_i l_i / D with D = sum over non-ignored i of w[y_i] (NaN when D == 0), sum = sum_i l_i
    d l_i / d x_i = (1 - eps) * w[y_i] * (s_i - e_{y_i}) + (eps / C) * (W * s_i - w)
Probability targets q (same shape as the input):
    q' = (1 - eps) * q + eps / C;  l_i = -sum_c w_c * q'_ic * lp_ic;  mean divides by N * L
    d l_i / d x_i = (sum_c w_c q'_ic) * s_i - w * q'_i   (the true derivative, any row sum)
nll_loss (the input holds log-probabilities, nothing is exponentiated):
    l_i = -w[y_i] * x_i[y_i];  d l_i / d x_i[y_i] = -w[y_i];  mean and ignoring as above.

A product with an exact zero factor (a weight, a target probability) is 0 even when the other
factor is infinite. A +inf logit gives the limit: the k entries at +inf share the probability mass
(lp = -log k there, -inf elsewhere).
"""

from __future__ import annotations

import math

import numpy as np

from references import central_difference as _central_difference

REDUCTIONS = ("mean", "sum", "none")


class ReferenceLabelError(ValueError):
    """A class index outside [0, C) that is not ignore_index (value, flat index)."""

    def __init__(self, value, index):
        super().__init__(f"label {value} at flat index {index} is out of range")
        self.value = value
        self.index = index


class ReferenceNoClassError(ValueError):
    """Probability targets over a class axis of length 0 with positions to score (SPEC 1.5)."""

    def __init__(self, positions):
        super().__init__(f"0 classes with {positions} position(s) to score")


def check_classes(positions, c):
    if positions > 0 and c == 0:
        raise ReferenceNoClassError(positions)


# ----------------------------------------------------------------------------------------------
# log_softmax / softmax along any dimension
# ----------------------------------------------------------------------------------------------

def _log_softmax_last(x):
    """log_softmax over the last axis of a float64 array, with the +inf limit."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    posinf = np.isposinf(x)
    k = posinf.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        z = x - m
        out = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
        limit = np.where(posinf, -np.log(np.maximum(k, 1)), -np.inf)
    return np.where(k > 0, limit, out)


def log_softmax(x, dim=-1):
    """log(softmax(x)) along `dim` in float64. A 0-d input gives 0.0."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        return np.zeros((), dtype=np.float64) if not np.isnan(x) else np.full((), np.nan)
    moved = np.moveaxis(x, dim, -1)
    return np.moveaxis(_log_softmax_last(moved), -1, dim)


def softmax(x, dim=-1):
    return np.exp(log_softmax(x, dim))


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------

def class_dim(ndim):
    return 0 if ndim == 1 else 1


def as_ncl(x):
    """(N, C, L) float64 view of an input of shape (C,), (N, C) or (N, C, d1, ..., dK)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x.reshape(1, x.shape[0], 1)
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, c, math.prod(x.shape[2:]))


def loss_shape(input_shape):
    """Shape of the per-element losses: the input's without the class dimension."""
    if len(input_shape) == 1:
        return ()
    return (input_shape[0],) + tuple(input_shape[2:])


def _labels(target, n, l):
    """Class indices as a (N, L) array of Python ints (exact for every integer dtype)."""
    flat = np.asarray(target).reshape(-1).tolist()
    if len(flat) != n * l:
        raise ValueError("reference: target has the wrong number of elements")
    out = np.empty(n * l, dtype=object)
    out[:] = [int(v) for v in flat]
    return out.reshape(n, l)


def _weights(weight, c):
    if weight is None:
        return np.ones(c, dtype=np.float64)
    return np.asarray(weight, dtype=np.float64).reshape(c)


def _zero_safe_product(a, b):
    """a * b with 0 * inf treated as 0."""
    with np.errstate(invalid="ignore"):
        return np.where((a == 0) | (b == 0), 0.0, a * b)


def _reduce(per, denominator, reduction, shape):
    if reduction == "none":
        return per.reshape(shape), 1.0
    total = float(np.sum(per))
    if reduction == "sum":
        return total, 1.0
    if reduction == "mean":
        if denominator == 0:
            return math.nan, math.inf
        return total / denominator, float(denominator)
    raise ValueError(f"reference: unknown reduction {reduction!r}")


def _scale(grad, denominator_used, reduction):
    """Divides the per-position gradient by the reduction divisor; where it is infinite (a mean
    over nothing) the gradient of the positions that contributed nothing is 0."""
    if reduction == "mean":
        if math.isinf(denominator_used):
            return np.zeros_like(grad)
        return grad / denominator_used
    return grad


def _check_labels(y, valid, c):
    flat_y = y.reshape(-1)
    flat_valid = valid.reshape(-1)
    for index, (value, ok) in enumerate(zip(flat_y, flat_valid)):
        if ok and not 0 <= value < c:
            raise ReferenceLabelError(value, index)


# ----------------------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------------------

def cross_entropy(x, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """(loss, grad) in float64: loss a float ("mean"/"sum") or an array ("none"), grad the gradient
    of the returned loss (of the sum of the per-element losses for "none"), shaped like x."""
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(target)
    if target.shape == x.shape:
        return cross_entropy_probs(x, target, weight, reduction=reduction,
                                   label_smoothing=label_smoothing)
    return cross_entropy_indices(x, target, weight, ignore_index=ignore_index,
                                 reduction=reduction, label_smoothing=label_smoothing)


def cross_entropy_indices(x, target, weight=None, *, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0):
    x = np.asarray(x, dtype=np.float64)
    x3 = as_ncl(x)
    n, c, l = x3.shape
    y = _labels(target, n, l)
    valid = np.array([[v != ignore_index for v in row] for row in y], dtype=bool).reshape(n, l)
    _check_labels(y, valid, c)
    w = _weights(weight, c)
    eps = max(float(label_smoothing), 0.0)

    lp = log_softmax(x3, 1)
    s = np.exp(lp)
    yi = np.where(valid, y, 0).astype(np.int64)
    onehot = np.zeros_like(x3)
    np.put_along_axis(onehot, yi[:, None, :], 1.0, axis=1)
    wy = np.where(valid, w[yi], 0.0) if c > 0 else np.zeros((n, l))
    picked = np.take_along_axis(lp, yi[:, None, :], axis=1)[:, 0, :] if c > 0 else np.zeros((n, l))

    per = _zero_safe_product(wy, -picked)
    if eps > 0:
        smooth = np.sum(_zero_safe_product(w[None, :, None], -lp), axis=1)
        per = _zero_safe_product(np.full_like(per, 1.0 - eps), per) + (eps / c) * smooth
    per = np.where(valid, per, 0.0)

    with np.errstate(invalid="ignore"):
        g = wy[:, None, :] * (s - onehot)
        if eps > 0:
            g = (1.0 - eps) * g + (eps / c) * (np.sum(w) * s - w[None, :, None])
    g = np.where(valid[:, None, :], g, 0.0)

    denominator = float(np.sum(wy))
    loss, divisor = _reduce(per, denominator, reduction, loss_shape(x.shape))
    return loss, _scale(g, divisor, reduction).reshape(x.shape)


def cross_entropy_probs(x, target, weight=None, *, reduction="mean", label_smoothing=0.0):
    x = np.asarray(x, dtype=np.float64)
    x3 = as_ncl(x)
    n, c, l = x3.shape
    check_classes(n * l, c)
    q = as_ncl(np.asarray(target, dtype=np.float64))
    w = _weights(weight, c)
    eps = max(float(label_smoothing), 0.0)
    if eps > 0:
        q = (1.0 - eps) * q + eps / c
    lp = log_softmax(x3, 1)
    s = np.exp(lp)
    wq = w[None, :, None] * q
    per = np.sum(_zero_safe_product(wq, -lp), axis=1)
    g = np.sum(wq, axis=1, keepdims=True) * s - wq
    loss, divisor = _reduce(per, float(n * l), reduction, loss_shape(x.shape))
    return loss, _scale(g, divisor, reduction).reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# nll_loss
# ----------------------------------------------------------------------------------------------

def nll_loss(x, target, weight=None, *, ignore_index=-100, reduction="mean"):
    x = np.asarray(x, dtype=np.float64)
    x3 = as_ncl(x)
    n, c, l = x3.shape
    y = _labels(target, n, l)
    valid = np.array([[v != ignore_index for v in row] for row in y], dtype=bool).reshape(n, l)
    _check_labels(y, valid, c)
    w = _weights(weight, c)
    yi = np.where(valid, y, 0).astype(np.int64)
    wy = np.where(valid, w[yi], 0.0) if c > 0 else np.zeros((n, l))
    picked = np.take_along_axis(x3, yi[:, None, :], axis=1)[:, 0, :] if c > 0 else np.zeros((n, l))
    per = np.where(valid, -_zero_safe_product(wy, picked), 0.0)
    g = np.zeros_like(x3)
    np.put_along_axis(g, yi[:, None, :], -wy[:, None, :], axis=1)
    g = np.where(valid[:, None, :], g, 0.0)
    loss, divisor = _reduce(per, float(np.sum(wy)), reduction, loss_shape(x.shape))
    return loss, _scale(g, divisor, reduction).reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------------

def central_difference(objective, x, h=1e-6):
    """Gradient of the scalar objective(x) by central differences (x is float64, restored)."""
    return _central_difference(objective, x, h)
