"""Losses over row blocks: partial sums per block of rows (axis 0), combined into the loss of the
whole array.

A global loss is ``numerator / divisor`` where both are sums over positions: Caffe's normalizers
(VALID counts the non-ignored positions, FULL all of them, BATCH_SIZE the outer positions) and
PyTorch's means (the sum of the target weights of the non-ignored class indices, the number of
positions or elements) are such sums. Each block contributes

    [loss sum, valid (count or weight sum), elements, outer positions]

(a float64 vector, see :func:`block_partial`), the vectors are added, and :func:`finish` divides
once, with the library's rules: ``max(1, Z)`` for Caffe, a plain division (0/0 = NaN) for
PyTorch's means, and the mean of the per-row losses for the TensorFlow functions. Used by
``xentkit eval`` (memory-mapped .npy files) and :mod:`xentkit.dask`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _caffe, _functional, _tf
from ._arrays import compute_dtype, result_dtype

__all__ = ["LOSSES", "Plan", "block_partial", "finish", "make_plan"]


@dataclass(frozen=True)
class LossInfo:
    """A loss: its function, the names of its two array arguments, its options and family."""
    function: Any
    arrays: Tuple[str, str]
    options: Tuple[str, ...]
    family: str  # "caffe", "torch" or "tf"


LOSSES: Dict[str, LossInfo] = {
    "sigmoid_cross_entropy_loss": LossInfo(
        _caffe.sigmoid_cross_entropy_loss, ("scores", "targets"),
        ("ignore_label", "normalization", "normalize"), "caffe"),
    "softmax_with_loss": LossInfo(
        _caffe.softmax_with_loss, ("scores", "labels"),
        ("axis", "ignore_label", "normalization", "normalize"), "caffe"),
    "binary_cross_entropy": LossInfo(
        _functional.binary_cross_entropy, ("input", "target"), ("weight", "reduction"), "torch"),
    "binary_cross_entropy_with_logits": LossInfo(
        _functional.binary_cross_entropy_with_logits, ("input", "target"),
        ("weight", "pos_weight", "reduction"), "torch"),
    "cross_entropy": LossInfo(
        _functional.cross_entropy, ("input", "target"),
        ("weight", "ignore_index", "reduction", "label_smoothing"), "torch"),
    "nll_loss": LossInfo(
        _functional.nll_loss, ("input", "target"), ("weight", "ignore_index", "reduction"), "torch"),
    "sigmoid_cross_entropy_with_logits": LossInfo(
        _tf.sigmoid_cross_entropy_with_logits, ("logits", "labels"), (), "tf"),
    "softmax_cross_entropy_with_logits": LossInfo(
        _tf.softmax_cross_entropy_with_logits, ("logits", "labels"), ("axis",), "tf"),
    "sparse_softmax_cross_entropy_with_logits": LossInfo(
        _tf.sparse_softmax_cross_entropy_with_logits, ("logits", "labels"), (), "tf"),
}

_CAFFE_DEFAULT = {"sigmoid_cross_entropy_loss": "batch_size", "softmax_with_loss": "valid"}
_NORMALIZATIONS = ("full", "valid", "batch_size", "none")


@dataclass
class Plan:
    """A loss with its checked options, for arrays whose first axis has `rows` entries.

    `splittable` is False when axis 0 is the class axis (a 0-d or 1-D input, or an explicit class
    axis 0): the arrays then form one block. `target_rows` says how to cut the second array into
    rows ("slice": ``b[i:j]``; "reshape": ``b.reshape(rows, -1)[i:j]``, for Caffe labels stored
    in another shape with the right count; "whole": never cut)."""
    name: str
    info: LossInfo
    options: Dict[str, Any]
    rows: int
    splittable: bool
    target_rows: str
    result_dtype: np.dtype
    normalization: Optional[str] = None
    reduction: Optional[str] = None
    row_weights: Tuple[str, ...] = field(default_factory=tuple)  # weights cut with the rows


def _normalization(name, options):
    normalization = options.get("normalization")
    normalize = options.get("normalize")
    if normalization is None:
        if normalize is None:
            return _CAFFE_DEFAULT[name]
        return "valid" if normalize else "batch_size"
    if not isinstance(normalization, str) or normalization.lower() not in _NORMALIZATIONS:
        raise ValueError("normalization: expected one of 'full', 'valid', 'batch_size', 'none' "
                         f"(any case), got {normalization!r}")
    return normalization.lower()


def _axis(value, ndim, default):
    axis = default if value is None else value
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an integer, got {axis!r}")
    if ndim == 0:
        return 0
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: expected a value in [{-ndim}, {ndim}), got {axis}")
    return int(axis) % ndim


def make_plan(name: str, a_shape, a_dtype, b_shape, b_dtype, options: Dict[str, Any],
              weight_shapes: Optional[Dict[str, Tuple[int, ...]]] = None) -> Plan:
    """Checks the options of loss `name` and the row structure of its two arrays (shapes and
    dtypes of the whole arrays). Raises ValueError/TypeError as the eager functions do."""
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {name!r}")
    info = LOSSES[name]
    unknown = sorted(set(k for k, v in options.items() if v is not None) - set(info.options))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option of {name} (its options: "
                         f"{', '.join(info.options) or 'none'})")
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    a_name, b_name = info.arrays
    ndim = len(a_shape)
    rows = a_shape[0] if ndim else 1
    splittable = ndim >= 2 or (ndim == 1 and info.family == "caffe")
    target_rows = "slice"
    plan_kw: Dict[str, Any] = {}
    if name == "softmax_with_loss":
        axis = _axis(options.get("axis"), ndim, 1)
        splittable = ndim >= 1 and axis >= 1
        expected = math.prod(a_shape[:axis]) * math.prod(a_shape[axis + 1:])
        if math.prod(b_shape) != expected:
            raise ValueError(
                f"{b_name}: expected {expected} values for {a_name} of shape {a_shape} with "
                f"axis={axis}, got shape {b_shape}")
        if splittable and (len(b_shape) == 0 or b_shape[0] != rows):
            target_rows = "reshape"
        plan_kw["normalization"] = _normalization(name, options)
    elif name == "sigmoid_cross_entropy_loss":
        if math.prod(b_shape) != math.prod(a_shape):
            raise ValueError(
                f"{b_name}: expected the same number of elements and the same first dimension "
                f"as {a_name} {a_shape}, got shape {b_shape}")
        plan_kw["normalization"] = _normalization(name, options)
    elif name == "softmax_cross_entropy_with_logits":
        axis = _axis(options.get("axis"), ndim, -1)
        splittable = ndim >= 2 and axis >= 1
    elif name == "sparse_softmax_cross_entropy_with_logits":
        splittable = ndim >= 2
    elif name == "sigmoid_cross_entropy_with_logits":
        splittable = ndim >= 1
    if info.family == "torch":
        reduction = options.get("reduction", "mean")
        reduction = "mean" if reduction is None else reduction
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum' for a loss over blocks "
                             f"(per-element losses are the eager functions' or "
                             f"xentkit.dask's reduction='none'), got {reduction!r}")
        plan_kw["reduction"] = reduction
    if splittable and target_rows == "slice" and (len(b_shape) == 0 or b_shape[0] != rows):
        raise ValueError(f"{b_name}: expected a first dimension of {rows} (that of {a_name} "
                         f"{a_shape}), got shape {b_shape}")
    row_weights = []
    for wname, wshape in (weight_shapes or {}).items():
        wshape = tuple(wshape)
        if splittable and len(wshape) == ndim and ndim and wshape[0] == rows and rows != 1:
            row_weights.append(wname)
    dtypes = [np.dtype(a_dtype)]
    if info.family != "caffe" and np.dtype(b_dtype).kind == "f" and name not in (
            "sigmoid_cross_entropy_with_logits", "softmax_cross_entropy_with_logits"):
        dtypes.append(np.dtype(b_dtype))
    try:
        rdt = np.result_type(*dtypes)
    except TypeError:
        rdt = np.dtype(a_dtype)
    if rdt.kind != "f":
        rdt = np.dtype(np.float64)
    return Plan(name, info, dict(options), rows, splittable, target_rows, rdt,
                row_weights=tuple(row_weights), **plan_kw)


def check_block_shapes(plan: Plan, a_shape, a_dtype, b_shape, b_dtype,
                       weights: Dict[str, Any]) -> None:
    """Checks shapes, dtypes and options on a zero-row block of the whole arrays' layout, so
    that mismatches of the trailing dimensions are reported before any block is read."""
    if not plan.splittable:
        return
    if plan.target_rows == "reshape":
        b_zero = (0, math.prod(b_shape) // plan.rows if plan.rows else 0)
    else:
        b_zero = (0,) + tuple(b_shape[1:])
    try:
        block_partial(plan, np.zeros((0,) + tuple(a_shape[1:]), a_dtype),
                      np.zeros(b_zero, b_dtype),
                      {k: (np.asarray(w)[:0] if k in plan.row_weights else w)
                       for k, w in weights.items()})
    except (ValueError, TypeError) as e:
        a_name, b_name = plan.info.arrays
        raise type(e)(f"{e} (checked on 0 rows of {a_name} {tuple(a_shape)} {np.dtype(a_dtype)} "
                      f"and {b_name} {tuple(b_shape)} {np.dtype(b_dtype)})") from None


def cut(plan: Plan, which: str, array, start: int, stop: int):
    """Rows [start, stop) of an argument: which = "a" (scores/input/logits), "b" (the targets)
    or a weight's name."""
    if not plan.splittable:
        return array
    if which == "a":
        return array[start:stop]
    if which == "b":
        if plan.target_rows == "reshape":
            return array.reshape(plan.rows, -1)[start:stop]
        return array[start:stop]
    if which in plan.row_weights:
        return array[start:stop]
    return array


def _not_ignored(values, ignore) -> np.ndarray:
    """Caffe's test: the value truncated toward zero (when it has an int64 equivalent) differs
    from the ignored label. Integers are compared exactly."""
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        info = np.iinfo(v.dtype)
        if not info.min <= ignore <= info.max:
            return np.ones(v.shape, dtype=bool)
        return v != v.dtype.type(ignore)
    d = v.astype(np.float64)
    with np.errstate(invalid="ignore"):
        in_range = (d > -9.223372036854775808e18) & (d < 9.223372036854775808e18)
        return ~(in_range & (np.trunc(d) == float(ignore)))


def block_partial(plan: Plan, a, b, weights: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """[loss sum, valid, elements, outer] of one block of rows (see the module docstring): the
    loss with normalization "none" / reduction "sum" (so the library checks the block: labels,
    shapes, dtypes), plus the counts the global divisor needs."""
    weights = {k: v for k, v in (weights or {}).items() if v is not None}
    name, fn, opts = plan.name, plan.info.function, plan.options
    a = np.asarray(a)
    b = np.asarray(b)
    out = np.zeros(4, dtype=np.float64)
    if plan.info.family == "caffe":
        ignore = opts.get("ignore_label")
        kw = {"ignore_label": ignore, "normalization": "none", "diff": False}
        if name == "softmax_with_loss":
            axis = _axis(opts.get("axis"), a.ndim, 1)
            kw["axis"] = axis
            outer = math.prod(a.shape[:axis])
            positions = outer * math.prod(a.shape[axis + 1:])
            total, _ = fn(a, b, **kw)
            labels = b
        else:
            outer = a.shape[0]
            positions = a.size
            total, _ = fn(a, b, **kw)
            labels = b.astype(compute_dtype(result_dtype((a,), ("scores",)))) \
                if b.dtype.kind == "f" else b
        valid = positions if ignore is None else int(np.count_nonzero(_not_ignored(labels, ignore)))
        out[:] = (total, valid, positions, outer)
        return out
    if plan.info.family == "torch":
        # float16 is computed in float32 anyway; converting first keeps the block's sum in
        # float32 (the eager functions round only the final result to float16).
        a = a.astype(np.float32) if a.dtype == np.float16 else a
        b = b.astype(np.float32) if b.dtype == np.float16 else b
        kw = {k: v for k, v in opts.items() if k in plan.info.options and v is not None}
        kw.update(weights)
        kw["reduction"] = "sum"
        total = fn(a, b, **kw)
        if name in ("cross_entropy", "nll_loss") and b.shape != a.shape:
            ignore = opts.get("ignore_index")
            ignore = -100 if ignore is None else int(ignore)
            keep = _not_ignored(b, ignore).reshape(-1)
            cls = b.reshape(-1)[keep].astype(np.int64)
            if "weight" in weights:
                cdt = compute_dtype(result_dtype((a,), ("input",)))
                w = np.asarray(weights["weight"]).astype(cdt).astype(np.float64)
                valid = float(w[cls].sum())
            else:
                valid = float(cls.size)
        elif name == "cross_entropy":  # probabilities: the mean divides by the positions
            valid = float(math.prod(a.shape[:1] + a.shape[2:])) if a.ndim > 1 else 1.0
        else:  # BCE: the element count
            valid = float(a.size)
        out[:] = (total, valid, a.size, a.shape[0] if a.ndim else 1)
        return out
    kw = {}
    if name == "softmax_cross_entropy_with_logits" and opts.get("axis") is not None:
        kw["axis"] = opts["axis"]
    losses = fn(b, a, **kw)
    out[:] = (float(np.sum(losses, dtype=np.float64)), np.size(losses), a.size,
              a.shape[0] if a.ndim else 1)
    return out


def finish(plan: Plan, totals) -> Dict[str, Any]:
    """The loss of the whole from the added partials, with the fields ``xentkit eval`` reports:
    loss (rounded to the result dtype, as the eager functions), divisor, valid, elements."""
    total, valid, elements, outer = (float(v) for v in totals)
    rdt = plan.result_dtype
    info: Dict[str, Any] = {"loss": plan.name, "dtype": str(rdt)}
    if plan.info.family == "caffe":
        z = {"full": elements, "valid": valid, "batch_size": outer, "none": 1.0}[plan.normalization]
        divisor = max(1.0, z)
        # Caffe's result has the scores' dtype (float16 computed in float32).
        rdt = np.dtype(np.float32) if rdt == np.float16 else rdt
        value = total / divisor
        info.update(normalization=plan.normalization, valid=int(valid), divisor=divisor)
    elif plan.info.family == "torch":
        if plan.reduction == "sum":
            divisor = 1.0
            value = total
        else:
            divisor = valid
            with np.errstate(divide="ignore", invalid="ignore"):
                value = float(np.float64(total) / np.float64(divisor))
        info.update(reduction=plan.reduction, divisor=divisor)
        if plan.name in ("cross_entropy", "nll_loss"):
            info["valid_weight"] = valid
    else:
        divisor = valid
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(np.float64(total) / np.float64(divisor))
        info.update(reduction="mean", divisor=divisor, sum=_rounded(total, rdt), count=int(valid))
    info["value"] = _rounded(value, rdt)
    if plan.info.family == "caffe":
        info["positions"] = int(elements)  # Caffe's outer * inner, the FULL normalizer
    return info


def _rounded(value, dt):
    with np.errstate(over="ignore"):
        return float(np.dtype(dt).type(value))
