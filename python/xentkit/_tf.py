"""TensorFlow-compatible cross entropies with logits (tf.nn) on NumPy arrays: per-element or
per-row losses, no reduction."""

from __future__ import annotations

import math

import numpy as np

from . import _core, _device
from ._arrays import (is_numeric, as_array, axis_value, cast, compute_dtype, contiguous, finish, flat, gradient_output,
                      index_array, result_dtype)

__all__ = ["sigmoid_cross_entropy_with_logits", "softmax_cross_entropy_with_logits",
           "sparse_softmax_cross_entropy_with_logits"]


def _logits(logits):
    x0 = as_array(logits, "logits")
    rdt = result_dtype((x0,), ("logits",))
    return x0, rdt, compute_dtype(rdt)


def _real_labels(labels, x0, cdt):
    z0 = as_array(labels, "labels")
    if not is_numeric(z0.dtype):
        raise TypeError(f"labels: expected a numeric dtype, got {z0.dtype}")
    if z0.shape != x0.shape:
        raise ValueError(
            f"labels: expected the shape of logits {x0.shape}, got {z0.shape}")
    return z0, contiguous(z0, cdt)


def _finish(loss, rdt, gw, go, grad):
    out = cast(loss, rdt)
    if grad is False or grad is None:
        return out
    return out, finish(gw, go)


def sigmoid_cross_entropy_with_logits(labels, logits, *, grad=False, stream=None, sync=False):
    """Per-element sigmoid cross entropy, as ``tf.nn.sigmoid_cross_entropy_with_logits``.

    ``l = max(x, 0) - x * z + log(1 + exp(-|x|))`` for logits x and labels z of the same shape
    (labels of another numeric dtype are converted to the logits' dtype; not range-checked).
    Returns the losses (the logits' shape and dtype), or ``(loss, grad)`` with
    ``grad = sigmoid(x) - z``, the gradient of their sum (``grad`` may be an array to write into,
    ``logits`` itself included). Infinite logits give the limits (0 for x = +inf, z = 1).
    """
    if _device.is_device_array(logits):
        return _device.sigmoid_cross_entropy_with_logits(labels, logits, grad=grad,
                                                         stream=stream, sync=sync)
    x0, rdt, cdt = _logits(logits)
    z0, z = _real_labels(labels, x0, cdt)
    gw, go = gradient_output(grad, "grad", x0, rdt, cdt, (x0, z0))
    loss = np.empty(x0.shape, dtype=cdt)
    _core.sigmoid_cross_entropy_with_logits(z.reshape(-1), contiguous(x0, cdt).reshape(-1),
                                            loss.reshape(-1), flat(gw))
    return _finish(loss, rdt, gw, go, grad)


def softmax_cross_entropy_with_logits(labels, logits, axis=-1, *, grad=False, stream=None,
                                      sync=False):
    """Per-row softmax cross entropy, as ``tf.nn.softmax_cross_entropy_with_logits``.

    ``l = -sum_c z[c] * log softmax(x)[c]`` along `axis` for labels z of the logits' shape
    (converted to the logits' dtype; rows need not sum to 1). Returns the losses (the logits'
    shape without `axis`), or ``(loss, grad)`` with the true derivative of their sum,
    ``grad = sum_c z[c] * softmax(x) - z`` (TF's ``softmax - z`` assumes rows summing to 1).
    """
    if _device.is_device_array(logits):
        return _device.softmax_cross_entropy_with_logits(labels, logits, axis, grad=grad,
                                                         stream=stream, sync=sync)
    x0, rdt, cdt = _logits(logits)
    if x0.ndim == 0:
        raise ValueError("logits: expected an array with at least one dimension, got shape ()")
    ax = axis_value(axis, x0.shape, "axis", "logits")
    z0, z = _real_labels(labels, x0, cdt)
    gw, go = gradient_output(grad, "grad", x0, rdt, cdt, (x0, z0))
    loss = np.empty(x0.shape[:ax] + x0.shape[ax + 1:], dtype=cdt)
    _core.softmax_cross_entropy_with_logits(
        z.reshape(-1), contiguous(x0, cdt).reshape(-1), math.prod(x0.shape[:ax]), x0.shape[ax],
        math.prod(x0.shape[ax + 1:]), loss.reshape(-1), flat(gw))
    return _finish(loss, rdt, gw, go, grad)


def sparse_softmax_cross_entropy_with_logits(labels, logits, *, grad=False, stream=None,
                                             sync=False):
    """Per-row softmax cross entropy with class indices, as
    ``tf.nn.sparse_softmax_cross_entropy_with_logits`` (the class axis is the last).

    ``l = -log softmax(x)[label]`` for labels of shape ``logits.shape[:-1]`` and any integer
    dtype. A label outside [0, C) raises :class:`LabelError`. Returns the losses, or
    ``(loss, grad)`` with ``grad = softmax(x) - onehot(label)``.
    """
    if _device.is_device_array(logits):
        return _device.sparse_softmax_cross_entropy_with_logits(labels, logits, grad=grad,
                                                                stream=stream, sync=sync)
    x0, rdt, cdt = _logits(logits)
    if x0.ndim == 0:
        raise ValueError("logits: expected an array with at least one dimension, got shape ()")
    z0 = as_array(labels, "labels")
    if z0.shape != x0.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {x0.shape[:-1]} (the logits' {x0.shape} without the class "
            f"axis), got {z0.shape}")
    z = index_array(z0, "labels")
    gw, go = gradient_output(grad, "grad", x0, rdt, cdt, (x0, z0))
    loss = np.empty(z0.shape, dtype=cdt)
    _core.sparse_softmax_cross_entropy_with_logits(
        z.reshape(-1), contiguous(x0, cdt).reshape(-1), z0.size, x0.shape[-1], loss.reshape(-1),
        flat(gw))
    return _finish(loss, rdt, gw, go, grad)


_DEVICE_NOTE = """
    On CUDA device logits (see the README section "CUDA") the labels must be on the same device
    (real labels with the logits' dtype; class indices of any integer dtype for the sparse
    function) and the results are device arrays of the logits' kind, enqueued on ``stream``;
    ``sync=True`` waits for it and raises what only the device checks.
"""

for _function in (sigmoid_cross_entropy_with_logits, softmax_cross_entropy_with_logits,
                  sparse_softmax_cross_entropy_with_logits):
    _function.__doc__ = (_function.__doc__ or "").rstrip() + "\n" + _DEVICE_NOTE
del _function
