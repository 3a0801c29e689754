"""Float64 NumPy references for the Caffe loss layers, written from the formulas of the contract.

Sigmoid layer, per element:  l = max(x, 0) - x*t + log1p(exp(-|x|)),
                              diff = loss_weight * (sigmoid(x) - t) / max(1, Z).
Softmax layer, per position: l = -log(max(p[label], FLT_MIN)),
                              diff = loss_weight * (p - onehot(label)) / max(1, Z).
An element/position is ignored when its label truncated toward zero equals ignore_label.
"""

from __future__ import annotations

import math

import numpy as np

FLT_MIN = float(np.finfo(np.float32).tiny)
LOSS_CAP = -math.log(FLT_MIN)  # 87.33654475055311

MODES = ("full", "valid", "batch_size", "none")


def resolve_mode(normalization, normalize, default):
    """The normalization mode Caffe's rules pick (the explicit mode wins over the legacy flag)."""
    if normalization is not None:
        return normalization.lower()
    if normalize is not None:
        return "valid" if normalize else "batch_size"
    return default


def normalizer(mode, outer, inner, valid):
    z = {"full": outer * inner, "valid": valid, "batch_size": outer, "none": 1}[mode]
    return float(max(1, z))


def truncate(values):
    """Labels/targets truncated toward zero, as Caffe's int() conversion (float64 result)."""
    return np.trunc(np.asarray(values, dtype=np.float64))


def compute_dtype(dtype):
    """float16 is computed in float32; float32/float64 in themselves."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


# ----------------------------------------------------------------------------------------------
# Sigmoid cross-entropy
# ----------------------------------------------------------------------------------------------

def stable_sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def sigmoid_elementwise(x, t):
    """Per-element loss max(x,0) - x*t + log1p(exp(-|x|)) in float64 (handles +-inf for t in {0,1})."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        linear = np.where(np.isinf(x) & (x > 0), x * (1.0 - t), np.maximum(x, 0) - x * t)
        linear = np.where(np.isinf(x) & (x < 0), -x * t, linear)
        # The formula's limit: x*(1-t) for x=+inf, -x*t for x=-inf; 0*inf -> 0 when t matches.
        linear = np.where(np.isinf(x) & (x > 0) & (t == 1.0), 0.0, linear)
        linear = np.where(np.isinf(x) & (x < 0) & (t == 0.0), 0.0, linear)
    return linear + np.log1p(np.exp(-np.abs(x)))


def sigmoid_ref(scores, targets, *, ignore_label=None, normalization=None, normalize=None,
                loss_weight=1.0):
    """(loss, diff) of the sigmoid layer in float64; diff has the scores' shape."""
    x = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64).reshape(x.shape)
    mode = resolve_mode(normalization, normalize, "batch_size")
    if ignore_label is None:
        keep = np.ones(x.shape, dtype=bool)
    else:
        keep = truncate(t) != ignore_label
    outer = x.shape[0]
    inner = x.size // outer if outer else 0
    z = normalizer(mode, outer, inner, int(keep.sum()))
    per = np.where(keep, sigmoid_elementwise(np.where(keep, x, 0.0), np.where(keep, t, 0.0)), 0.0)
    loss = float(per.sum() / z)
    diff = np.where(keep, stable_sigmoid(x) - t, 0.0) * (loss_weight / z)
    return loss, diff


def sigmoid_naive_ref(scores, targets):
    """Caffe's unit-test reference: -t log(p + [t==0]) - (1-t) log(1 - p + [t==1]), sum / num."""
    x = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64).reshape(x.shape)
    total = 0.0
    for xi, ti in zip(x.ravel(), t.ravel()):
        p = 1.0 / (1.0 + math.exp(-xi))
        total -= ti * math.log(p + (ti == 0)) + (1 - ti) * math.log(1 - p + (ti == 1))
    return total / x.shape[0]


# ----------------------------------------------------------------------------------------------
# Softmax with loss
# ----------------------------------------------------------------------------------------------

def split_axis(shape, axis):
    nd = len(shape)
    ax = axis % nd
    outer = math.prod(shape[:ax])
    channels = shape[ax]
    inner = math.prod(shape[ax + 1:])
    return ax, outer, channels, inner


def log_softmax(x, axis):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(x, axis):
    return np.exp(log_softmax(x, axis))


def softmax_ref(scores, labels, *, axis=1, ignore_label=None, normalization=None, normalize=None,
                loss_weight=1.0):
    """(loss, diff, prob, capped) of the softmax layer in float64.

    `capped` counts the valid positions whose loss hit the FLT_MIN cap."""
    x = np.asarray(scores, dtype=np.float64)
    ax, outer, channels, inner = split_axis(x.shape, axis)
    mode = resolve_mode(normalization, normalize, "valid")
    x3 = x.reshape(outer, channels, inner)
    logp = log_softmax(x3, axis=1)
    p = np.exp(logp)
    y = truncate(labels).reshape(outer, inner)
    keep = np.ones(y.shape, dtype=bool) if ignore_label is None else (y != ignore_label)
    if np.any(keep & ((y < 0) | (y >= channels))):
        raise ValueError("reference: label out of range")
    yi = np.where(keep, y, 0).astype(np.int64)
    picked = np.take_along_axis(logp, yi[:, None, :], axis=1)[:, 0, :]
    per = np.minimum(-picked, LOSS_CAP)
    capped = int(np.sum(keep & (-picked > LOSS_CAP)))
    z = normalizer(mode, outer, inner, int(keep.sum()))
    loss = float(np.sum(np.where(keep, per, 0.0)) / z)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, yi[:, None, :], 1.0, axis=1)
    g = np.where(keep[:, None, :], p - onehot, 0.0) * (loss_weight / z)
    return loss, g.reshape(x.shape), p.reshape(x.shape), capped


def central_difference(objective, x, h):
    """Gradient of objective(x) by central differences, coordinate by coordinate (x is restored)."""
    flat = x.reshape(-1)
    grad = np.empty(flat.shape, dtype=np.float64)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = objective(x)
        flat[k] = old - h
        down = objective(x)
        flat[k] = old
        grad[k] = (up - down) / (2 * h)
    return grad.reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------

RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}


def assert_loss_close(actual, expected, dtype, atol=0.0):
    dtype = np.dtype(dtype)
    assert isinstance(actual, float)
    rtol = 1e-5 if dtype == np.float16 else RTOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def assert_diff_close(actual, expected, dtype, scale):
    """Elementwise comparison; `scale` (loss_weight / normalizer) sets the absolute floor, since an
    entry such as sigmoid(x) - t may cancel to a value far below its terms."""
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    rtol = RTOL[dtype]
    atol = abs(scale) * {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-6,
                         np.dtype(np.float16): 2e-3}[dtype]
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol)
