"""PyTorch-compatible losses (the functions of torch.nn.functional) on NumPy arrays; the autograd
operations on torch.Tensors are in the xentkit.torch package."""

from __future__ import annotations

import math

import numpy as np

from . import _core, _device
from ._arrays import (bits_view, half_flat, is_floating, is_numeric, native16, as_array, axis_value, cast, compute_dtype, contiguous, finish, flat, gradient_output,
                      ignore_value, index_array, real_value, result_dtype)

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "log_softmax", "nll_loss", "softmax"]

# at::Reduction's numbering, shared with the C++ enum.
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _reduction(reduction):
    # ValueError for anything else, strings or not, as PyTorch.
    value = _REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if value is None:
        raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")
    return value


_SHORT_REDUCTIONS = {"mean": 1, "sum": 2}
_core._register_array_type(np.ndarray, np.empty_like)


_FINITE_MAX = {np.dtype(np.float32): float(np.finfo(np.float32).max),
               np.dtype(np.float16): float(np.finfo(np.float16).max)}


def _scalar_result(value, dt):
    """A reduced loss as a Python float, rounded to the result dtype (float16 included)."""
    if dt.itemsize == 8 and dt.kind == "f":
        return float(value)
    top = _FINITE_MAX.get(dt)
    if top is not None and -top <= value <= top:  # no overflow to silence (NaN goes below)
        return float(dt.type(value))
    with np.errstate(over="ignore"):
        return float(dt.type(value))


def _loss_output(reduction, shape, compute_dt):
    return np.empty(shape, dtype=compute_dt) if reduction == 0 else None


def _result(reduction, value, loss, result_dt, grad_work, grad_out, want_grad):
    if reduction == 0:
        out = cast(loss, result_dt)
    else:
        out = _scalar_result(value, result_dt)
    if not want_grad:
        return out
    return out, finish(grad_work, grad_out)


def _wants(grad):
    return not (grad is False or grad is None)


def _broadcast(w0, name, shape, compute_dt):
    """An element weight broadcast against `shape` on its trailing dimensions (NumPy rules), as
    (data, stride, period): element i reads data[(i // stride) % period]. The weight is read in
    place when its non-1 dimensions are one run of the loss's dimensions; otherwise it is expanded
    once."""
    if w0 is None:
        return None, 1, 1
    w = w0
    if not is_numeric(w.dtype):
        raise TypeError(f"{name}: expected a numeric dtype, got {w.dtype}")
    try:
        full = np.broadcast_shapes(w.shape, shape)
    except ValueError:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to the input's {shape}, got {w.shape}") from None
    if full != tuple(shape):
        raise ValueError(
            f"{name}: expected a shape that broadcasts to the input's {shape} without enlarging "
            f"it, got {w.shape} (broadcast shape {full})")
    if math.prod(shape) == 0:
        return None, 1, 1
    padded = (1,) * (len(shape) - w.ndim) + w.shape
    dims = [d for d, n in enumerate(padded) if n != 1]
    if not dims:
        return contiguous(w, compute_dt).reshape(-1)[:1], 1, 1
    a, b = dims[0], dims[-1]
    if all(padded[d] == shape[d] for d in range(a, b + 1)):
        return (contiguous(w, compute_dt).reshape(-1), math.prod(shape[b + 1:]),
                math.prod(shape[a:b + 1]))
    data = np.ascontiguousarray(np.broadcast_to(w, shape), dtype=compute_dt)
    return data.reshape(-1), 1, data.size


def _binary_args(input, target):
    x0 = as_array(input, "input")
    t0 = as_array(target, "target")
    if not is_floating(t0.dtype):
        raise TypeError(f"target: expected a floating dtype (as the input's), got {t0.dtype}")
    rdt = result_dtype((x0, t0), ("input", "target"))
    if t0.shape != x0.shape:
        raise ValueError(
            f"target: expected the input's shape {x0.shape}, got {t0.shape} (no broadcasting)")
    return x0, t0, rdt, compute_dtype(rdt)


def _grad(grad, x0, compute_dt, inputs):
    """The gradient output: the input's shape and dtype (as autograd gives), whatever dtype the
    loss was computed in; it must not overlap any of `inputs` except the input itself."""
    return gradient_output(grad, "grad", x0, x0.dtype.newbyteorder("="), compute_dt,
                           tuple(a for a in inputs if a is not None))


def _optional(arr, name):
    return None if arr is None else as_array(arr, name)


def binary_cross_entropy(input, target, weight=None, *, reduction="mean", grad=False,
                         stream=None, sync=False):
    """Binary cross entropy of probabilities, as ``torch.nn.functional.binary_cross_entropy``.

    Parameters
    ----------
    input : array of probabilities in [0, 1], any shape; float16, float32 or float64.
    target : floating array of the input's shape, values in [0, 1] (a different floating dtype
        promotes, as NumPy and PyTorch do).
    weight : array or None, broadcast against the input's trailing dimensions (a (C,) weight on
        an (N, C) input scales columns); it may not enlarge the shape.
    reduction : "mean" (the sum divided by the element count, whatever the weights) | "sum" |
        "none" (the per-element losses).
    grad : False, True (return the gradient w.r.t. input too) or an array to write it into (it
        may be ``input`` itself).

    Per element ``l = -w * (t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))``; the
    gradient is ``w * (p - t) / max(p * (1 - p), 1e-12)`` (1e-12 held as a float32, as PyTorch).
    An input or target value outside [0, 1], NaN included, raises ValueError before anything is
    written. Returns the loss (a Python float, or an array for "none"), or ``(loss, grad)``.
    """
    if _device.is_device_array(input):
        return _device.binary_cross_entropy(input, target, weight, red=_reduction(reduction),
                                            grad=grad, stream=stream, sync=sync)
    x0, t0, rdt, cdt = _binary_args(input, target)
    red = _reduction(reduction)
    w0 = _optional(weight, "weight")
    w, ws, wp = _broadcast(w0, "weight", x0.shape, cdt)
    gw, go = _grad(grad, x0, cdt, (x0, t0, w0))
    loss = _loss_output(red, x0.shape, cdt)
    value = _core.binary_cross_entropy(
        contiguous(x0, cdt).reshape(-1), contiguous(t0, cdt).reshape(-1), w, ws, wp, red,
        flat(loss), flat(gw))
    return _result(red, value, loss, rdt, gw, go, _wants(grad))


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction="mean",
                                     pos_weight=None, grad=False, stream=None, sync=False):
    """Binary cross entropy of logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    input : logits of any shape; float16, float32 or float64.
    target : floating array of the input's shape (not range-checked: soft targets are fine).
    weight, pos_weight : arrays or None, broadcast against the input's trailing dimensions
        (pos_weight of shape (C,) weighs the positive term of the last axis; for an (N, C, H, W)
        input pass (C, 1, 1)). Neither may enlarge the shape.
    reduction : "mean" (divided by the element count) | "sum" | "none".
    grad : False | True | array (may be ``input`` itself).

    Per element, with ``L = 1 + (pos_weight - 1) * t``:
    ``l = w * ((1 - t) * x + L * log(1 + exp(-x)))``, gradient ``w * (L * sigmoid(x) - pos_weight * t)``.
    Infinite logits give the mathematical limits (0 for x = +inf with t = 1, where PyTorch gives
    NaN). Returns the loss, or ``(loss, grad)``.
    """
    if (weight is None and pos_weight is None and type(reduction) is str
            and (grad is False or grad is True or type(grad) is np.ndarray)):
        # The short path: float32 or float64 ndarrays of one shape, C-contiguous (and a
        # gradient array like the input, in place or apart from both).
        red = _SHORT_REDUCTIONS.get(reduction)
        if red is not None:
            out = _core.binary_cross_entropy_small(input, target, red, grad)
            if out is not None:
                return out
    if _device.is_device_array(input):
        return _device.binary_cross_entropy_with_logits(
            input, target, weight, red=_reduction(reduction), pos_weight=pos_weight, grad=grad,
            stream=stream, sync=sync)
    x0, t0, rdt, cdt = _binary_args(input, target)
    red = _reduction(reduction)
    w0 = _optional(weight, "weight")
    p0 = _optional(pos_weight, "pos_weight")
    w, ws, wp = _broadcast(w0, "weight", x0.shape, cdt)
    pw, ps, pp = _broadcast(p0, "pos_weight", x0.shape, cdt)
    k16 = native16(x0.dtype)
    if k16 and t0.dtype == x0.dtype:  # float16/bfloat16 storage, float32 arithmetic
        sdt = x0.dtype
        gw, go = _grad(grad, x0, sdt, (x0, t0, w0, p0))
        loss = _loss_output(red, x0.shape, sdt)
        kernel = getattr(_core, "binary_cross_entropy_with_logits_" + k16)
        value = kernel(bits_view(x0, sdt), bits_view(t0, sdt), w, ws, wp, pw, ps, pp, red,
                       half_flat(loss), half_flat(gw))
        return _result(red, value, loss, rdt, gw, go, _wants(grad))
    gw, go = _grad(grad, x0, cdt, (x0, t0, w0, p0))
    loss = _loss_output(red, x0.shape, cdt)
    value = _core.binary_cross_entropy_with_logits(
        contiguous(x0, cdt).reshape(-1), contiguous(t0, cdt).reshape(-1), w, ws, wp, pw, ps, pp,
        red, flat(loss), flat(gw))
    return _result(red, value, loss, rdt, gw, go, _wants(grad))


def _class_layout(x0):
    """(outer, C, inner, per-position shape candidates) for PyTorch's class dimension."""
    if x0.ndim == 0:
        raise ValueError("input: expected an array with at least one dimension (C,), (N, C) or "
                         "(N, C, d1, ..., dK), got shape ()")
    if x0.ndim == 1:
        return 1, x0.shape[0], 1, ((), (1,))
    return (x0.shape[0], x0.shape[1], math.prod(x0.shape[2:]),
            ((x0.shape[0],) + x0.shape[2:],))


def _position_shape(x0):
    """The shape of per-position losses: the input's without the class dimension."""
    return x0.shape[:1] + x0.shape[2:] if x0.ndim > 1 else ()


def _index_target(t0, x0, shapes, function):
    if t0.shape not in shapes:
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(
            f"target: expected class indices of shape {expected} for input of shape {x0.shape}"
            + (f" (or class probabilities of the input's shape)" if function == "cross_entropy"
               else "") + f", got shape {t0.shape}")
    if is_floating(t0.dtype):
        raise TypeError(
            f"target: expected class indices of an integer dtype, got {t0.dtype} (class "
            f"probabilities must have the input's shape {x0.shape})")
    return index_array(t0, "target")


def _class_index(kernel, function, layout, x0, t0, w0, red, ignore, grad, *options,
                 half_kernel=None):
    """The class-index path of cross_entropy (options: label smoothing) and nll_loss.
    half_kernel: the float16-storage kernel, when the function has one (its bfloat16 twin is
    the same name ending in _bf16)."""
    outer, channels, inner, shapes = layout
    rdt = result_dtype((x0,), ("input",))
    cdt = compute_dtype(rdt)
    t = _index_target(t0, x0, shapes, function)
    w = _class_weight(w0, channels, cdt)
    k16 = native16(x0.dtype)
    if half_kernel is not None and k16:
        sdt = x0.dtype
        if k16 == "bf16":
            half_kernel = getattr(_core, half_kernel.__name__[:-len("_half")] + "_bf16")
        gw, go = _grad(grad, x0, sdt, (x0, t0, w0))
        loss = _loss_output(red, _position_shape(x0), sdt)
        value = half_kernel(bits_view(x0, sdt), t.reshape(-1), outer, channels, inner, w, ignore,
                            red, *options, half_flat(loss), half_flat(gw))
        return _result(red, value, loss, rdt, gw, go, _wants(grad))
    gw, go = _grad(grad, x0, cdt, (x0, t0, w0))
    loss = _loss_output(red, _position_shape(x0), cdt)
    value = kernel(contiguous(x0, cdt).reshape(-1), t.reshape(-1), outer, channels, inner, w,
                   ignore, red, *options, flat(loss), flat(gw))
    return _result(red, value, loss, rdt, gw, go, _wants(grad))


def _class_weight(w, channels, cdt):
    if w is None:
        return None
    if not is_numeric(w.dtype):
        raise TypeError(f"weight: expected a numeric dtype, got {w.dtype}")
    if w.ndim != 1 or w.shape[0] != channels:
        raise ValueError(
            f"weight: expected a 1-D array of {channels} class weights, got shape {w.shape}")
    return contiguous(w, cdt)


def _smoothing(label_smoothing):
    eps = real_value(label_smoothing, "label_smoothing")
    if math.isnan(eps) or eps > 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {eps}")
    return max(eps, 0.0)  # a negative value means none, as in PyTorch


def _z_loss(z_loss):
    z = real_value(z_loss, "z_loss")
    if not (0.0 <= z < math.inf):
        raise ValueError(f"z_loss: expected a finite value >= 0, got {z}")
    return z


def _softcap(softcap):
    """None -> 0.0 (none); else a finite value > 0."""
    if softcap is None:
        return 0.0
    s = real_value(softcap, "softcap")
    if not (0.0 < s < math.inf):
        raise ValueError(f"softcap: expected None or a finite value > 0, got {s}")
    return s


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, grad=False, stream=None,
                  sync=False):
    """Cross entropy of logits, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    input : logits (C,), (N, C) or (N, C, d1, ..., dK); the class dimension is 1 (0 for 1-D).
        float16, float32 or float64.
    target : class indices of shape () (or (1,)) for 1-D input, (N,) or (N, d1, ..., dK), any
        integer dtype; or class probabilities of the input's own shape (floating; another
        floating dtype promotes the loss, the gradient keeps the input's dtype).
    weight : (C,) class weights or None.
    ignore_index : class-index targets equal to it add nothing (any integer; it may be a real
        class). Must be negative (it is unused) with probability targets.
    reduction : "mean" | "sum" | "none". With class indices "mean" divides by the sum of the
        weights of the non-ignored targets (their number without weights): NaN when that is 0,
        with a zero gradient at ignored positions. With probabilities it divides by N*d1*..*dK.
    label_smoothing : eps in [0, 1] (negative values act as 0, as in PyTorch). With class
        indices the loss is ``(1 - eps) * nll + eps / C * sum_c w[c] * (-log p[c])``, both terms
        under the same divisor; probabilities are smoothed to ``(1 - eps) * q + eps / C``.
    z_loss : z >= 0 (finite). With class indices every non-ignored position adds
        ``z * w[y] * lse**2`` (``lse`` the log-sum-exp of its (soft-capped) logits) under the
        same divisor; the gradient gains ``2 * z * w[y] * lse * softmax``. ValueError with
        probability targets.
    softcap : None, or s > 0 (finite): every logit x becomes ``s * tanh(x / s)`` before the
        softmax (Gemma 2's logit soft-capping); the gradient flows through the tanh. Class
        indices only (ValueError with probability targets).
    grad : False | True | array (may be ``input`` itself).

    Per position, class index y: ``l = -w[y] * log softmax(x)[y]`` (plus the smoothing term);
    probabilities q: ``l = -sum_c w[c] * q[c] * log softmax(x)[c]``. The gradient is the true
    derivative (``(sum_c w q) * softmax - w * q`` for probabilities, whatever their row sums).
    An index outside [0, C) that is not ignore_index raises :class:`LabelError`. Returns the loss
    (a Python float, or for "none" an array of the input's shape without the class dimension), or
    ``(loss, grad)``.
    """
    if (weight is None and (grad is False or grad is True or type(grad) is np.ndarray)
            and type(reduction) is str
            and type(ignore_index) is int and ignore_index == -100
            and type(label_smoothing) is float and label_smoothing == 0.0
            and type(z_loss) is float and z_loss == 0.0 and softcap is None):
        # The short path: an (N, C) float ndarray and int64 (N,) targets, nothing else (a
        # gradient array of the input's shape and dtype, in place or apart from the inputs).
        red = _SHORT_REDUCTIONS.get(reduction)
        if red is not None:
            out = _core.cross_entropy_small(input, target, red, grad)
            if out is not None:
                return out
    z = _z_loss(z_loss)
    cap = _softcap(softcap)
    if _device.is_device_array(input):
        return _device.cross_entropy(
            input, target, weight, ignore=ignore_value(ignore_index, "ignore_index",
                                                       allow_none=False),
            red=_reduction(reduction), eps=_smoothing(label_smoothing), grad=grad, stream=stream,
            sync=sync, z_loss=z, softcap=cap)
    x0 = as_array(input, "input")
    t0 = as_array(target, "target")
    w0 = _optional(weight, "weight")
    red = _reduction(reduction)
    eps = _smoothing(label_smoothing)
    ignore = ignore_value(ignore_index, "ignore_index", allow_none=False)
    layout = _class_layout(x0)
    outer, channels, inner, _ = layout
    if t0.shape == x0.shape:
        if not is_floating(t0.dtype):
            raise TypeError(
                f"target: expected a floating dtype for class probabilities (a target of the "
                f"input's shape {x0.shape}), got {t0.dtype}")
        if z != 0.0:
            raise ValueError(
                f"z_loss: expected 0.0 with class probabilities (the z-loss needs class "
                f"indices), got {z}")
        if cap != 0.0:
            raise ValueError(
                f"softcap: expected None with class probabilities (soft-capping needs class "
                f"indices), got {cap}")
        if ignore >= 0:
            raise ValueError(
                f"ignore_index: expected a negative value (unused) with class probabilities, "
                f"got {ignore}")
        rdt = result_dtype((x0, t0), ("input", "target"))
        cdt = compute_dtype(rdt)
        w = _class_weight(w0, channels, cdt)
        gw, go = _grad(grad, x0, cdt, (x0, t0, w0))
        loss = _loss_output(red, _position_shape(x0), cdt)
        value = _core.cross_entropy_probabilities(
            contiguous(x0, cdt).reshape(-1), contiguous(t0, cdt).reshape(-1), outer, channels,
            inner, w, red, eps, flat(loss), flat(gw))
        return _result(red, value, loss, rdt, gw, go, _wants(grad))
    return _class_index(_core.cross_entropy_indices, "cross_entropy", layout, x0, t0, w0, red,
                        ignore, grad, eps, z, cap, half_kernel=_core.cross_entropy_indices_half)


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean", grad=False,
             stream=None, sync=False):
    """Negative log likelihood, as ``torch.nn.functional.nll_loss``.

    ``input`` holds log-probabilities (nothing is exponentiated: per position the loss is
    ``-w[y] * input[y]``); layouts, target, weight, ignore_index, reduction and errors as
    :func:`cross_entropy` with class indices. The gradient is ``-w[y] / D`` at the target entry
    (D the divisor of the mean, else 1) and 0 elsewhere. Returns the loss, or ``(loss, grad)``.
    """
    if _device.is_device_array(input):
        return _device.nll_loss(
            input, target, weight, ignore=ignore_value(ignore_index, "ignore_index",
                                                       allow_none=False),
            red=_reduction(reduction), grad=grad, stream=stream, sync=sync)
    x0 = as_array(input, "input")
    t0 = as_array(target, "target")
    w0 = _optional(weight, "weight")
    red = _reduction(reduction)
    ignore = ignore_value(ignore_index, "ignore_index", allow_none=False)
    return _class_index(_core.nll_loss, "nll_loss", _class_layout(x0), x0, t0, w0, red, ignore,
                        grad)


def _softmax_like(kernel, input, dim, stream=None, sync=False):
    if _device.is_device_array(input):
        which = "log_softmax" if kernel is _core.log_softmax else "softmax"
        return _device.softmax_like(which, input, dim, stream=stream, sync=sync)
    x0 = as_array(input, "input")
    rdt = result_dtype((x0,), ("input",))
    cdt = compute_dtype(rdt)
    ax = axis_value(dim, x0.shape, "dim", "input")
    shape = x0.shape if x0.ndim else (1,)
    out = np.empty(x0.shape, dtype=cdt)
    kernel(contiguous(x0, cdt).reshape(-1), math.prod(shape[:ax]), shape[ax],
           math.prod(shape[ax + 1:]), out.reshape(-1))
    return cast(out, rdt)


def log_softmax(input, dim=-1, *, stream=None, sync=False):
    """``log(softmax(input))`` along `dim`, as ``torch.nn.functional.log_softmax``, from the
    log-sum-exp: ``x - max - log(sum(exp(x - max)))``. The result has the input's dtype (float16
    is computed in float32). A +inf logit gives the limit (the +inf entries share the mass).
    A CUDA device array gives a device array of its kind, on ``stream`` (see the README section
    "CUDA"; ``sync=True`` waits for it)."""
    return _softmax_like(_core.log_softmax, input, dim, stream, sync)


def softmax(input, dim=-1, *, stream=None, sync=False):
    """``exp(x - max) / sum(exp(x - max))`` along `dim`, as ``torch.nn.functional.softmax``.
    A CUDA device array gives a device array of its kind (see :func:`log_softmax`)."""
    return _softmax_like(_core.softmax, input, dim, stream, sync)


_DEVICE_NOTE = """
    On CUDA device arrays (see the README section "CUDA"; ``stream=`` and ``sync=`` apply to them
    only) every array argument must be on the input's device with the input's dtype (class
    indices: any integer dtype); the loss is a 0-d device array (a device array for "none") and
    the gradient a device array, of the input's kind. ``sync=True`` waits for the stream and
    raises what only the device can check (labels, probabilities), else those give NaN.
"""

for _function in (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, nll_loss):
    _function.__doc__ = (_function.__doc__ or "").rstrip() + "\n" + _DEVICE_NOTE
del _function
