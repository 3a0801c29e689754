"""Hypothesis strategies and case builders for the property tests of every public function.

A *case* is one call of a public function: its positional and keyword arguments, where its
gradient output goes (``diff``/``grad``), and the float64 reference result. Builders draw shapes
(empty and size-1 dimensions included), dtypes, options and values; the values come from a NumPy
generator seeded by Hypothesis, in a *regime*:

* ``"moderate"``: finite values of a drawn magnitude (the reference comparisons);
* ``"special"``: the same with +-inf, NaN, huge, tiny and subnormal values mixed in.

The examples per property come from the ``HYPOTHESIS_PROFILE`` environment variable: ``ci`` (the
default, 60 examples) or ``long`` (1000, for a local soak run).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import ref_binary_tf as rb
import ref_softmax_family as rs
import references as rc

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=1000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
INT_LABELS = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8,
                                         np.uint16, np.uint32, np.uint64))
# Tolerance by the dtype the result is rounded to (float16 is computed in float32).
TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 4e-3}

float_dtypes = st.sampled_from(FLOATS)
seeds = st.integers(0, 2**32 - 1)
magnitudes = st.sampled_from([0.1, 1.0, 4.0, 20.0])


def small_shape(min_dims=1, max_dims=4, max_side=4):
    """Shapes with empty and size-1 dimensions, at most 4**4 elements."""
    return st.lists(st.integers(0, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def nonempty_shape(min_dims=1, max_dims=4, max_side=4):
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------

def _specials(dtype):
    fi = np.finfo(dtype)
    # Huge values stay a factor 64 below the top of the range, so that a product with a weight
    # or a sum over a row that the reference keeps finite is finite in the dtype too.
    huge = float(fi.max) / 64
    return np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, huge, -huge,
                     float(fi.tiny), float(fi.smallest_subnormal), 1e4, -1e4], dtype=np.float64)


def values(rng, shape, dtype, scale, regime):
    """Values of `dtype` (exactly representable in it), normal with standard deviation `scale`;
    in the special regime about a quarter of them are replaced by awkward numbers."""
    with np.errstate(over="ignore"):
        x = np.asarray(rng.standard_normal(shape) * scale).astype(dtype)
        if regime == "special" and x.size:
            mask = rng.random(shape) < 0.25
            picks = rng.choice(_specials(dtype), size=shape)
            x = np.where(mask, picks.astype(dtype), x).astype(dtype)
    return x


def probabilities(rng, shape, dtype, exact_ends=True):
    """Values in [0, 1] of `dtype`, some exactly 0 or 1."""
    p = np.asarray(rng.random(shape))
    if exact_ends and p.size:
        p = np.where(rng.random(shape) < 0.15, np.round(p), p)
    return p.astype(dtype)


def class_weights(rng, c, dtype):
    return rng.uniform(0.25, 2.0, size=c).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    grad_kw: Optional[str]        # "diff", "grad" or None (no gradient output)
    input_pos: int                # the positional index of the array the gradient is taken for
    dtype: np.dtype               # the result dtype
    reference: Callable[[], Any]  # () -> (loss, grad) in float64; raises for bad labels
    magnitude: float              # largest |input| (sets the absolute tolerance)
    terms_per_divisor: float = 1.0  # terms summed into a reduced loss / its divisor

    @property
    def input(self):
        return self.args[self.input_pos]

    def arrays(self):
        """Every array argument (positional or keyword)."""
        found = [a for a in self.args if isinstance(a, np.ndarray)]
        found += [v for k, v in self.kwargs.items() if isinstance(v, np.ndarray) and k != self.grad_kw]
        return found


def _magnitude(*arrays):
    m = 1.0
    for a in arrays:
        if a is not None and a.size:
            with np.errstate(invalid="ignore"):
                finite = np.abs(a[np.isfinite(a)].astype(np.float64))
            if finite.size:
                m = max(m, float(finite.max()))
    return m


def _reduction(draw):
    return draw(st.sampled_from(["mean", "sum", "none"]))


@st.composite
def sigmoid_layer_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(1, 4))
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    t = probabilities(rng, shape, dt)
    ignore = draw(st.sampled_from([None, -1, 0, 1]))
    if ignore == -1 and t.size:
        t = np.where(rng.random(shape) < 0.3, dt.type(-1), t).astype(dt)
    if shape and shape[0] and draw(st.booleans()):
        t = t.reshape(shape[0], -1)  # any shape with the same count and first dimension
    norm = draw(st.sampled_from([None, "full", "VALID", "batch_size", "None"]))
    normalize = draw(st.sampled_from([None, True, False]))
    lw = draw(st.sampled_from([1.0, 0.5, -2.0, 0.0]))
    kwargs = dict(ignore_label=ignore, normalization=norm, normalize=normalize, loss_weight=lw)
    mode = rc.resolve_mode(norm, normalize, "batch_size")
    outer = shape[0]
    inner = x.size // outer if outer else 0
    keep = x.size if ignore is None else int(np.sum(rc.truncate(t) != ignore))
    z = rc.normalizer(mode, outer, inner, keep)

    def ref():
        return rc.sigmoid_ref(x, t, **kwargs)

    return Case("sigmoid_cross_entropy_loss", _sigmoid_layer, (x, t), kwargs, "diff", 0, dt, ref,
                _magnitude(x) * max(1.0, abs(lw)), max(x.size, 1) / z)


def _sigmoid_layer(*args, **kwargs):
    import xentkit
    return xentkit.sigmoid_cross_entropy_loss(*args, **kwargs)


def _labels_for(draw, rng, shape, c, ignore, dtype_choices):
    """Class labels of `shape` in [0, c), some equal to `ignore`, of a drawn dtype."""
    ldt = draw(st.sampled_from(dtype_choices))
    y = rng.integers(0, max(c, 1), size=shape) if c > 0 else np.zeros(shape, dtype=np.int64)
    if ignore is not None:
        y = np.where(rng.random(shape) < (1.0 if c == 0 else 0.3), ignore, y)
    if ldt.kind == "u" and ignore is not None and ignore < 0:
        ldt = np.dtype(np.int64)
    if ldt.kind in "iu" and ignore is not None and not (np.iinfo(ldt).min <= ignore <= np.iinfo(ldt).max):
        ldt = np.dtype(np.int64)
    if ldt.kind in "iu" and c > np.iinfo(ldt).max:
        ldt = np.dtype(np.int64)
    y = y.astype(ldt)
    if ldt.kind == "f":  # floating labels are truncated toward zero: add a fraction
        y = (y + np.where(y >= 0, 0.25, -0.25)).astype(ldt)
    return y


@st.composite
def softmax_layer_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(1, 4))
    ax = draw(st.integers(-len(shape), len(shape) - 1))
    _, outer, c, inner = rc.split_axis(shape, ax)
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    ignore = draw(st.sampled_from([None, -1, 255, 0]))
    if c == 0 and ignore is None:
        ignore = 255
    labels = _labels_for(draw, rng, (outer * inner,), c, ignore,
                         INT_LABELS + (np.dtype(np.float32), np.dtype(np.float64)))
    if outer and inner and draw(st.booleans()):
        labels = labels.reshape(outer, inner)
    norm = draw(st.sampled_from([None, "full", "valid", "BATCH_SIZE", "none"]))
    lw = draw(st.sampled_from([1.0, 3.0, -0.5]))
    kwargs = dict(axis=ax, ignore_label=ignore, normalization=norm, loss_weight=lw)
    mode = rc.resolve_mode(norm, None, "valid")
    keep = outer * inner if ignore is None else int(np.sum(rc.truncate(labels) != ignore))
    z = rc.normalizer(mode, outer, inner, keep)

    def ref():
        if c == 0:  # every position ignored (the generator makes sure): nothing to score
            return 0.0, np.zeros(shape)
        if regime == "special":
            return _softmax_layer_limits(x, labels, **kwargs)
        loss, diff, _, _ = rc.softmax_ref(x, labels, **kwargs)
        return loss, diff

    return Case("softmax_with_loss", _softmax_layer, (x, labels), kwargs, "diff", 0, dt, ref,
                _magnitude(x) * max(1.0, abs(lw)), max(outer * inner, 1) / z)


def _softmax_layer_limits(x, labels, *, axis, ignore_label, normalization, loss_weight):
    """references.softmax_ref with the log-softmax limit at +inf logits (the +inf entries share
    the mass); rows holding NaN are set by the test's NaN rule."""
    x = np.asarray(x, dtype=np.float64)
    _, outer, c, inner = rc.split_axis(x.shape, axis)
    with np.errstate(all="ignore"):
        lp = rs.log_softmax(x.reshape(outer, c, inner), 1)
        p = np.exp(lp)
    y = rc.truncate(labels).reshape(outer, inner)
    keep = np.ones(y.shape, dtype=bool) if ignore_label is None else (y != ignore_label)
    if np.any(keep & ((y < 0) | (y >= c))):
        raise ValueError("reference: label out of range")
    yi = np.where(keep, y, 0).astype(np.int64)
    picked = np.take_along_axis(lp, yi[:, None, :], axis=1)[:, 0, :]
    per = np.minimum(-picked, rc.LOSS_CAP)
    z = rc.normalizer(rc.resolve_mode(normalization, None, "valid"), outer, inner, int(keep.sum()))
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, yi[:, None, :], 1.0, axis=1)
    g = np.where(keep[:, None, :], p - onehot, 0.0) * (loss_weight / z)
    return float(np.sum(np.where(keep, per, 0.0)) / z), g.reshape(x.shape)


def _softmax_layer(*args, **kwargs):
    import xentkit
    return xentkit.softmax_with_loss(*args, **kwargs)


def _broadcast_weight(draw, rng, shape, dt):
    """None, a scalar-like weight, or a weight over a trailing run of dims (1s allowed)."""
    kind = draw(st.sampled_from(["none", "trailing", "full", "ones"]))
    if kind == "none" or not shape:
        return None
    if kind == "full":
        wshape = shape
    elif kind == "ones":
        wshape = (1,) * draw(st.integers(0, len(shape)))
    else:
        k = draw(st.integers(1, len(shape)))
        wshape = tuple(d if draw(st.booleans()) else 1 for d in shape[len(shape) - k:])
    return rng.uniform(0.0, 2.0, size=wshape).astype(dt)


@st.composite
def bce_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(0, 4))
    rng = np.random.default_rng(draw(seeds))
    p = probabilities(rng, shape, dt)
    t = probabilities(rng, shape, dt)
    w = _broadcast_weight(draw, rng, shape, dt)
    red = _reduction(draw)
    n = max(p.size, 1)

    def ref():
        return rb.bce_ref(p, t, w, red)

    return Case("binary_cross_entropy", _torch("binary_cross_entropy"), (p, t, w),
                dict(reduction=red), "grad", 0, dt, ref, 100.0 * 2, n / (n if red == "mean" else 1))


@st.composite
def bce_logits_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(0, 4))
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    t = probabilities(rng, shape, dt)
    w = _broadcast_weight(draw, rng, shape, dt)
    pw = _broadcast_weight(draw, rng, shape, dt)
    red = _reduction(draw)
    n = max(x.size, 1)

    def ref():
        return rb.bce_logits_ref(x, t, w, red, pw)

    return Case("binary_cross_entropy_with_logits", _torch("binary_cross_entropy_with_logits"),
                (x, t, w), dict(reduction=red, pos_weight=pw), "grad", 0, dt, ref,
                _magnitude(x) * 4, n / (n if red == "mean" else 1))


def _torch(name):
    def call(*args, **kwargs):
        import xentkit
        return getattr(xentkit, name)(*args, **kwargs)
    call.__name__ = name
    return call


def _class_shape(draw):
    """(C,), (N, C) or (N, C, d1, ..) with empty and size-1 dims."""
    return draw(small_shape(1, 4))


@st.composite
def cross_entropy_case(draw, regime="moderate", function="cross_entropy"):
    dt = draw(float_dtypes)
    shape = _class_shape(draw)
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    if function == "nll_loss" and regime == "moderate":
        x = (-np.abs(x)).astype(dt)  # log-probabilities (any value works; these look real)
    c = shape[0] if len(shape) == 1 else shape[1]
    pos_shape = rs.loss_shape(shape)
    red = _reduction(draw)
    weight = class_weights(rng, c, dt) if draw(st.booleans()) else None
    probs = function == "cross_entropy" and draw(st.booleans())
    kwargs = dict(reduction=red)
    if function == "cross_entropy":
        kwargs["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, -0.5]))
    if probs:
        tdt = draw(st.sampled_from([dt, np.dtype(np.float64)]))
        target = probabilities(rng, shape, tdt)
        positions = max(math.prod(pos_shape), 1)
        div = positions if red == "mean" else 1
        rdt = np.result_type(dt, tdt)
    else:
        ignore = draw(st.sampled_from([-100, 0, -1, 7]))
        kwargs["ignore_index"] = ignore
        target = _labels_for(draw, rng, pos_shape, c, ignore, INT_LABELS)
        if len(shape) == 1 and c != 1 and draw(st.booleans()):
            target = target.reshape(1)  # (1,) is class indices unless it is the input's shape
        valid = target.reshape(-1).astype(np.int64) != ignore
        wy = (np.asarray(weight, np.float64)[target.reshape(-1).astype(np.int64)[valid]]
              if weight is not None and c else np.ones(int(valid.sum())))
        div = float(np.sum(wy)) if red == "mean" else 1.0
        positions = max(int(valid.sum()), 1)
        rdt = dt
    ref_fn = rs.cross_entropy if function == "cross_entropy" else rs.nll_loss

    def ref():
        if c == 0:  # no class: index targets are valid only when all are ignored
            if probs:  # probability rows over no classes are an error when there are any
                rs.check_classes(math.prod(rs.loss_shape(x.shape)), c)
            return _no_class_reference(x, target, kwargs,
                                       np.zeros(0, bool) if probs else valid)
        return ref_fn(x, target, weight, **kwargs)

    terms = positions / div if div else 1.0
    return Case(function, _torch(function), (x, target, weight), kwargs, "grad", 0,
                np.dtype(rdt), ref, _magnitude(x) * 2 * max(c, 1) ** 0.5 + 10, terms)


def _no_class_reference(x, target, kwargs, valid):
    """Losses over C == 0 (the float64 references index a class axis and divide by C): an index
    that is not ignored is out of range; otherwise the losses are 0 and a mean is 0 / 0."""
    if valid.any():
        flat = int(np.argmax(valid))
        raise rs.ReferenceLabelError(int(target.reshape(-1)[flat]), flat)
    red = kwargs["reduction"]
    loss = {"none": np.zeros(rs.loss_shape(x.shape)), "sum": 0.0, "mean": math.nan}[red]
    return loss, np.zeros(x.shape)


@st.composite
def softmax_case(draw, regime="moderate", log=False):
    dt = draw(float_dtypes)
    shape = draw(small_shape(0, 4))
    dim = draw(st.integers(-max(len(shape), 1), max(len(shape), 1) - 1))
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    name = "log_softmax" if log else "softmax"
    ref_fn = rs.log_softmax if log else rs.softmax

    def ref():
        return ref_fn(x, dim), None

    return Case(name, _torch(name), (x, dim), {}, None, 0, dt, ref,
                _magnitude(x) * 2 + 10 if log else 1.0)


@st.composite
def sigmoid_tf_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(0, 4))
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    z = probabilities(rng, shape, draw(st.sampled_from([dt, np.dtype(np.float64)])))

    def ref():
        return rb.sigmoid_tf_ref(z, x)

    return Case("sigmoid_cross_entropy_with_logits", _torch("sigmoid_cross_entropy_with_logits"),
                (z, x), {}, "grad", 1, dt, ref, _magnitude(x) + 1)


@st.composite
def softmax_tf_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(1, 4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    z = probabilities(rng, shape, dt)

    def ref():
        return rb.softmax_tf_ref(z, x, axis)

    c = shape[axis]
    return Case("softmax_cross_entropy_with_logits", _torch("softmax_cross_entropy_with_logits"),
                (z, x, axis), {}, "grad", 1, dt, ref, (_magnitude(x) * 2 + 10) * max(c, 1))


@st.composite
def sparse_tf_case(draw, regime="moderate"):
    dt = draw(float_dtypes)
    shape = draw(small_shape(1, 4))
    if shape[-1] == 0:
        shape = shape[:-1] + (1,)  # a label needs a class to point at
    rng = np.random.default_rng(draw(seeds))
    x = values(rng, shape, dt, draw(magnitudes), regime)
    labels = _labels_for(draw, rng, shape[:-1], shape[-1], None, INT_LABELS)

    def ref():
        return rb.sparse_tf_ref(labels, x)

    return Case("sparse_softmax_cross_entropy_with_logits",
                _torch("sparse_softmax_cross_entropy_with_logits"), (labels, x), {}, "grad", 1, dt,
                ref, _magnitude(x) * 2 + 10)


CASES = {
    "sigmoid_cross_entropy_loss": sigmoid_layer_case,
    "softmax_with_loss": softmax_layer_case,
    "binary_cross_entropy": bce_case,
    "binary_cross_entropy_with_logits": bce_logits_case,
    "cross_entropy": cross_entropy_case,
    "nll_loss": lambda regime="moderate": cross_entropy_case(regime, function="nll_loss"),
    "log_softmax": lambda regime="moderate": softmax_case(regime, log=True),
    "softmax": softmax_case,
    "sigmoid_cross_entropy_with_logits": sigmoid_tf_case,
    "softmax_cross_entropy_with_logits": softmax_tf_case,
    "sparse_softmax_cross_entropy_with_logits": sparse_tf_case,
}
