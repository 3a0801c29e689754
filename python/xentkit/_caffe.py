"""Caffe's loss layers: SigmoidCrossEntropyLoss and SoftmaxWithLoss."""

from __future__ import annotations

import math

import numpy as np

from . import _core, _device
from ._errors import LabelError
from ._arrays import (bits_view, is_bfloat16, native16, as_array, axis_value, contiguous, finish, gradient_output, half_flat,
                      ignore_value, label_array,
                      real_dtype_for, real_value)

__all__ = ["sigmoid_cross_entropy_loss", "softmax_with_loss"]

# Caffe's NormalizationMode numbering (caffe.proto), shared with the C++ enum.
_MODES = {"full": 0, "valid": 1, "batch_size": 2, "none": 3}


def _mode(normalization, normalize, default):
    if normalization is None:
        if normalize is None:
            return _MODES[default]
        if not isinstance(normalize, (bool, np.bool_)):
            raise TypeError(f"normalize: expected True, False or None, got {normalize!r}")
        return _MODES["valid"] if normalize else _MODES["batch_size"]
    if not isinstance(normalization, str):
        raise TypeError(
            "normalization: expected one of 'full', 'valid', 'batch_size', 'none' or None, "
            f"got {normalization!r}")
    try:
        return _MODES[normalization.lower()]
    except KeyError:
        raise ValueError(
            "normalization: expected one of 'full', 'valid', 'batch_size', 'none' (any case), "
            f"got {normalization!r}") from None


def sigmoid_cross_entropy_loss(scores, targets, *, ignore_label=None, normalization=None,
                               normalize=None, loss_weight=1.0, diff=True, stream=None,
                               sync=False):
    """Caffe's SigmoidCrossEntropyLoss layer: loss and diff from one fused pass.

    Parameters
    ----------
    scores : array of float16, float32 or float64, at least one axis; shape (N, ...).
    targets : array with the same number of elements and the same first dimension N (soft targets
        are fine; values are not range-checked). Converted to the scores' dtype if it differs.
    ignore_label : int or None. Elements whose target truncated toward zero equals it add nothing
        and get diff 0.
    normalization : "full" | "valid" | "batch_size" | "none" (any case) or None for Caffe's
        default here, "batch_size". The loss is divided by max(1, Z): Z = N*inner (full), the
        number of non-ignored elements (valid), N (batch_size) or 1 (none).
    normalize : bool or None. Caffe's deprecated flag, used only when normalization is None:
        True -> "valid", False -> "batch_size".
    loss_weight : float. Scales the diff only (Caffe's top diff); the returned loss is unweighted.
    diff : True (new array), False/None (no gradient, nothing written), or a C-contiguous writable
        array of the scores' shape and dtype to write into (it may be ``scores`` itself).
    stream : CUDA stream for device arrays (see the README section "CUDA"): an integer handle or
        a stream object (CuPy ``.ptr``, PyTorch ``.cuda_stream``, ``__cuda_stream__``); default:
        the producing library's current stream. Ignored for host arrays.
    sync : bool, device arrays only. False (default): nothing waits for the device, and an error
        only the device sees (a bad label, a probability outside [0, 1]) makes the outputs NaN.
        True: waits for the stream and raises that error as the host path does.

    Returns
    -------
    (loss, diff): loss = sum(max(x, 0) - x*t + log1p(exp(-|x|))) / max(1, Z) as a Python float;
    diff = loss_weight * (sigmoid(x) - t) / max(1, Z), 0 at ignored elements, or None.
    On CUDA device arrays (targets of the scores' dtype) the loss is a 0-d device array of the
    scores' dtype and diff a device array, both of the scores' kind (torch, cupy, ...).
    """
    if _device.is_device_array(scores):
        return _device.sigmoid_cross_entropy_loss(
            scores, targets, ignore=ignore_value(ignore_label),
            mode=_mode(normalization, normalize, "batch_size"),
            loss_weight=real_value(loss_weight, "loss_weight"), diff=diff, stream=stream,
            sync=sync)
    x0 = as_array(scores, "scores")
    t0 = as_array(targets, "targets")
    cdt = real_dtype_for(x0, "scores")
    if x0.ndim < 1:
        raise ValueError(f"scores: expected an array with at least one axis, got shape {x0.shape}")
    if t0.dtype.kind not in "fiub" and not is_bfloat16(t0.dtype):
        raise TypeError(f"targets: expected a numeric dtype, got {t0.dtype}")
    if t0.size != x0.size or t0.ndim < 1 or t0.shape[0] != x0.shape[0]:
        raise ValueError(
            "targets: expected the same number of elements and the same first dimension as "
            f"scores {x0.shape}, got shape {t0.shape}")
    ign = ignore_value(ignore_label)
    mode = _mode(normalization, normalize, "batch_size")
    weight = real_value(loss_weight, "loss_weight")
    k16 = native16(x0.dtype)
    if k16 and t0.dtype == x0.dtype:  # float16/bfloat16 storage, float32 arithmetic
        sdt = x0.dtype
        work, out = _diff_output(diff, x0, sdt, (x0, t0))
        kernel = getattr(_core, "sigmoid_cross_entropy_loss_" + k16)
        loss = kernel(bits_view(x0, sdt), bits_view(t0, sdt), x0.shape[0], ign, mode, weight,
                      half_flat(work))
        return loss, out
    work, out = _diff_output(diff, x0, cdt, (x0, t0))
    x = contiguous(x0, cdt).reshape(-1)
    t = contiguous(t0, cdt).reshape(-1)
    loss = _core.sigmoid_cross_entropy_loss(
        x, t, x0.shape[0], ign, mode, weight, None if work is None else work.reshape(-1))
    return loss, finish(work, out)


def _exact_label_value(err, labels):
    """Sets a LabelError's value to the stored label itself: the message's decimal text of a
    floating label (9 significant digits for float32) need not be its exact value."""
    flat = labels.reshape(-1)
    if labels.dtype.kind == "f" and err.index is not None and 0 <= err.index < flat.size:
        err.value = flat[err.index].item()


def _diff_output(diff, scores, compute_dt, inputs):
    result_dt = scores.dtype if scores.dtype.isnative else compute_dt
    return gradient_output(diff, "diff", scores, result_dt, compute_dt, inputs)


def softmax_with_loss(scores, labels, *, axis=1, ignore_label=None, normalization=None,
                      normalize=None, loss_weight=1.0, diff=True, prob=False, stream=None,
                      sync=False):
    """Caffe's SoftmaxWithLoss layer: softmax over `axis`, then the multinomial logistic loss.

    Parameters
    ----------
    scores : array of float16, float32 or float64, shape (d0, ..., C, ..., dk) with C at `axis`.
        outer = product of the dims before `axis`, inner = product of the dims after it.
    labels : outer*inner labels in any shape ((N,), (N, 1, H, W), (N, H, W), ...); any integer
        dtype, or floating (truncated toward zero, as Caffe stores labels in float blobs). A label
        outside [0, C) that is not ignored raises LabelError.
    axis : int, default 1; negative counts from the end.
    ignore_label : int or None. Positions whose truncated label equals it add nothing and get
        diff 0 on every channel; it may lie outside [0, C) (255, -1).
    normalization : "full" | "valid" | "batch_size" | "none" (any case) or None for Caffe's
        default here, "valid". The loss is divided by max(1, Z).
    normalize : bool or None. Caffe's deprecated flag, used only when normalization is None.
    loss_weight : float. Scales the diff only; the returned loss is unweighted.
    diff : True | False | None | array (may be ``scores`` itself), as in
        :func:`sigmoid_cross_entropy_loss`.
    prob : bool. Also return the softmax probabilities (Caffe's second top).
    stream : CUDA stream for device arrays (see the README section "CUDA"): an integer handle or
        a stream object (CuPy ``.ptr``, PyTorch ``.cuda_stream``, ``__cuda_stream__``); default:
        the producing library's current stream. Ignored for host arrays.
    sync : bool, device arrays only. False (default): nothing waits for the device, and an error
        only the device sees (a bad label, a probability outside [0, 1]) makes the outputs NaN.
        True: waits for the stream and raises that error as the host path does.

    Returns
    -------
    (loss, diff) or (loss, diff, prob): loss = sum over valid positions of
    -log(max(p[label], FLT_MIN)) / max(1, Z), from the log-sum-exp (so at most 87.3365);
    diff = loss_weight * (p - onehot(label)) / max(1, Z), all channels 0 at ignored positions.
    On CUDA device arrays (labels of an integer dtype, float32 or float64) the loss is a 0-d
    device array of the scores' dtype; diff and prob are device arrays of the scores' kind.
    """
    if _device.is_device_array(scores):
        if not isinstance(prob, (bool, np.bool_)):
            raise TypeError(f"prob: expected True or False, got {prob!r}")
        return _device.softmax_with_loss(
            scores, labels, axis=axis, ignore=ignore_value(ignore_label),
            mode=_mode(normalization, normalize, "valid"),
            loss_weight=real_value(loss_weight, "loss_weight"), diff=diff, prob=bool(prob),
            stream=stream, sync=sync)
    x0 = as_array(scores, "scores")
    l0 = as_array(labels, "labels")
    cdt = real_dtype_for(x0, "scores")
    nd = x0.ndim
    if nd < 1:
        raise ValueError(f"scores: expected an array with at least one axis, got shape {x0.shape}")
    ax = axis_value(axis, x0.shape, "axis", "scores")
    outer = math.prod(x0.shape[:ax])
    channels = x0.shape[ax]
    inner = math.prod(x0.shape[ax + 1:])
    if l0.size != outer * inner:
        raise ValueError(
            f"labels: expected {outer * inner} values (outer {outer} x inner {inner}) for scores "
            f"of shape {x0.shape} with axis={ax}, got shape {l0.shape}")
    lab = label_array(l0, "labels")
    ign = ignore_value(ignore_label)
    mode = _mode(normalization, normalize, "valid")
    weight = real_value(loss_weight, "loss_weight")
    if not isinstance(prob, (bool, np.bool_)):
        raise TypeError(f"prob: expected True or False, got {prob!r}")
    k16 = native16(x0.dtype)
    if k16:  # float16/bfloat16 storage, float32 arithmetic
        sdt = x0.dtype
        work, out = _diff_output(diff, x0, sdt, (x0, l0))
        p_out = np.empty(x0.shape, dtype=sdt) if prob else None
        kernel = getattr(_core, "softmax_with_loss_" + k16)
        try:
            loss = kernel(
                bits_view(x0, sdt), lab.reshape(-1), outer, channels, inner, ign, mode, weight,
                half_flat(work), half_flat(p_out))
        except LabelError as err:
            _exact_label_value(err, lab)
            raise
        return (loss, out, p_out) if prob else (loss, out)
    work, out = _diff_output(diff, x0, cdt, (x0, l0))
    p_out = np.empty(x0.shape, dtype=cdt) if prob else None
    x = contiguous(x0, cdt).reshape(-1)
    try:
        loss = _core.softmax_with_loss(
            x, lab.reshape(-1), outer, channels, inner, ign, mode, weight,
            None if work is None else work.reshape(-1), None if p_out is None else p_out.reshape(-1))
    except LabelError as err:
        _exact_label_value(err, lab)
        raise
    out = finish(work, out)
    if prob:
        if p_out.dtype != x0.dtype and x0.dtype == np.float16:
            p_out = p_out.astype(np.float16)
        elif p_out.dtype != x0.dtype and is_bfloat16(x0.dtype):
            p_out = p_out.astype(x0.dtype)
        return loss, out, p_out
    return loss, out
