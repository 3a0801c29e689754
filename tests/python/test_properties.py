"""Property tests over every public function (Hypothesis).

For random shapes (empty and size-1 dimensions included), dtypes, options, label patterns and value
ranges, every public function:

* agrees with the float64 NumPy references (tolerances by dtype), for every way of asking for the
  gradient (none, a new array, a caller's buffer pre-filled with NaN that must be fully
  overwritten, the input itself in place);
* with +-inf, NaN, huge and tiny inputs, gives NaN exactly where the reference does, the same
  infinities, and close finite values elsewhere;
* never modifies its inputs (unless one is the gradient output);
* raises the documented exception, naming the argument, for unsupported dtypes, mismatched shapes,
  bad options and out-of-range labels, and then leaves a caller's output buffer untouched.

Examples per property: ``HYPOTHESIS_PROFILE=ci`` (default) or ``long`` (see strategies.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import ref_softmax_family as rs
import xentkit
from strategies import CASES, TOL, Case

NAMES = sorted(CASES)
GRADIENT_NAMES = [n for n in NAMES if n not in ("log_softmax", "softmax")]


# ----------------------------------------------------------------------------------------------
# Calling a case
# ----------------------------------------------------------------------------------------------

def _sentinel_buffer(case):
    """A caller-provided gradient buffer: the input's shape and dtype, every element NaN."""
    return np.full(case.input.shape, np.nan, dtype=case.input.dtype)


def invoke(case: Case, mode: str, buffer=None):
    """Calls the case's function with the gradient requested as `mode` ("off", "new", "buffer",
    "inplace"); returns (loss, grad or None)."""
    kwargs = dict(case.kwargs)
    if case.grad_kw is not None:
        kwargs[case.grad_kw] = {"off": False, "new": True, "buffer": buffer,
                                "inplace": case.input}[mode]
    out = case.fn(*case.args, **kwargs)
    if case.grad_kw is None:
        return out, None
    if case.grad_kw == "diff":  # the Caffe layers always return (loss, diff)
        loss, grad = out
        return loss, grad
    if mode == "off":
        return out, None
    return out


def _expected_label_error(case):
    """The reference's verdict: None, or the exception a bad label makes it raise."""
    try:
        return case.reference(), None
    except (rs.ReferenceLabelError, rs.ReferenceNoClassError) as err:
        return None, err
    except (ValueError, IndexError) as err:  # the other references' words for a bad label
        if "label out of range" in str(err):
            return None, err
        raise


def _raises_as_reference(err):
    """What xentkit raises where the reference raised: LabelError for a bad label, ValueError for
    probability rows over no classes (SPEC 1.5)."""
    if isinstance(err, rs.ReferenceNoClassError):
        return pytest.raises(ValueError, match="at least one class along the class axis")
    return pytest.raises(xentkit.LabelError)


def _rounded(expected, dtype):
    """The float64 reference rounded to the result dtype (values past its range become inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(expected, dtype=np.float64).astype(dtype).astype(np.float64)


def check_loss(case, actual, expected, special=False):
    dt = case.dtype
    tol = TOL[dt] * (10 if special else 1)
    if _reduced(case):
        assert type(actual) is float, type(actual)
        exp = float(_rounded(expected, dt))
        atol = tol * case.magnitude * case.terms_per_divisor
        _close(np.array(actual), np.array(exp), tol, atol, special)
    else:
        assert isinstance(actual, np.ndarray), type(actual)
        assert actual.dtype == dt, (actual.dtype, dt)
        assert actual.shape == np.shape(expected), (actual.shape, np.shape(expected))
        _close(actual.astype(np.float64), _rounded(expected, dt), tol, tol * case.magnitude, special)


def _reduced(case):
    """Whether the loss is a Python float (the Caffe layers, and "mean"/"sum") or an array."""
    if case.grad_kw == "diff":
        return True
    return case.kwargs.get("reduction") in ("mean", "sum")


def check_grad(case, actual, expected, special=False):
    dt = case.input.dtype
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == dt and actual.shape == case.input.shape
    tol = TOL[np.dtype(dt)] * (10 if special else 1)
    exp = _rounded(expected, dt)
    finite = exp[np.isfinite(exp)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    _close(actual.astype(np.float64), exp, tol, tol * scale, special)


def _close(actual, expected, rtol, atol, special):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if special:
        # NaN exactly where the reference is NaN, the same infinities, close finite values
        # (relative to the largest finite one: huge inputs carry absolute rounding with them).
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN pattern")
        inf = np.isinf(expected)
        np.testing.assert_array_equal(actual[inf], expected[inf], err_msg="infinities")
        # Finite values: the absolute tolerance follows the largest finite value and the size of
        # the terms (`atol`): terms of 1e36 that cancel leave an error of their own size.
        fin = np.isfinite(expected)
        big = float(np.max(np.abs(expected[fin]))) if fin.any() else 1.0
        np.testing.assert_allclose(actual[fin], expected[fin], rtol=rtol,
                                   atol=max(rtol * max(1.0, big), atol))
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _grad_modes(case):
    return ["off"] if case.grad_kw is None else ["off", "new", "buffer", "inplace"]


# ----------------------------------------------------------------------------------------------
# Agreement with the references; inputs unmodified; outputs fully written
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_matches_reference_and_leaves_inputs_alone(name, data):
    case = data.draw(CASES[name](), label="case")
    mode = data.draw(st.sampled_from(_grad_modes(case)), label="grad mode")
    note(f"{case.name} dtype={case.dtype} shape={case.input.shape} kwargs={case.kwargs}")
    expected, label_err = _expected_label_error(case)
    before = [a.copy() for a in case.arrays()]
    buffer = _sentinel_buffer(case) if mode == "buffer" else None
    if label_err is not None:
        with _raises_as_reference(label_err):
            invoke(case, mode, buffer)
        if buffer is not None:
            assert np.isnan(buffer).all(), "an output was written by a call that raised"
        _assert_unchanged(case, before, in_place=False)
        return
    loss, grad = invoke(case, mode, buffer)
    exp_loss, exp_grad = expected
    check_loss(case, loss, exp_loss)
    _assert_unchanged(case, before, in_place=(mode == "inplace"))
    if mode == "off":
        assert grad is None
        return
    check_grad(case, grad, exp_grad)
    if mode == "buffer":
        assert grad is buffer
    if mode == "inplace":
        assert grad is case.input


def _assert_unchanged(case, before, in_place):
    for i, (arr, old) in enumerate(zip(case.arrays(), before)):
        if in_place and arr is case.input:
            continue
        np.testing.assert_array_equal(arr, old, err_msg=f"input array {i} was modified")
        assert arr.dtype == old.dtype


# ----------------------------------------------------------------------------------------------
# inf, NaN, huge and tiny values
# ----------------------------------------------------------------------------------------------

SPECIAL_NAMES = [n for n in NAMES if n != "binary_cross_entropy"]  # its range check is below


@pytest.mark.parametrize("name", SPECIAL_NAMES)
@given(data=st.data())
def test_special_values_follow_the_reference(name, data):
    case = data.draw(CASES[name](regime="special"), label="case")
    note(f"{case.name} dtype={case.dtype} input={case.input!r} kwargs={case.kwargs}")
    expected, label_err = _expected_label_error(case)
    if label_err is not None:
        with _raises_as_reference(label_err):
            invoke(case, "new")
        return
    exp_loss, exp_grad = _nan_rows(case, *expected)
    loss, grad = invoke(case, "off" if case.grad_kw is None else "new")
    check_loss(case, loss, exp_loss, special=True)
    if grad is not None:
        check_grad(case, grad, exp_grad, special=True)


def _class_axis(case):
    """The softmax axis of a softmax-family case and the mask of its scored positions, or None."""
    name, x = case.name, case.input
    if name == "softmax_with_loss":
        ax = case.kwargs["axis"] % x.ndim
        labels = case.args[1]
        ign = case.kwargs["ignore_label"]
        keep = np.ones(labels.size, bool) if ign is None else np.trunc(labels.reshape(-1)) != ign
        return ax, keep
    if name in ("log_softmax", "softmax"):
        return (case.args[1] % max(x.ndim, 1) if x.ndim else None), None
    if name == "cross_entropy":
        target = case.args[1]
        ax = 0 if x.ndim == 1 else 1
        if target.shape == x.shape:
            return ax, None
        return ax, target.reshape(-1).astype(np.int64) != case.kwargs["ignore_index"]
    if name == "softmax_cross_entropy_with_logits":
        return case.args[2] % x.ndim, None
    if name == "sparse_softmax_cross_entropy_with_logits":
        return x.ndim - 1, None
    return None, None  # elementwise functions and nll_loss: the references propagate NaN


def _nan_rows(case, exp_loss, exp_grad):
    """The NaN rule of the softmax family: a scored row holding a NaN, or only -inf logits (a
    softmax of 0 / 0), gives NaN for that row's loss, gradient and (log-)probabilities, and a
    NaN reduced loss. (The float64 references leave some of these rows finite.)"""
    if case.name in ("log_softmax", "softmax") and case.input.ndim == 0:
        v = float(case.input)  # one implicit class
        return (np.float64(np.nan) if math.isnan(v) or v == -math.inf else exp_loss), exp_grad
    ax, keep = _class_axis(case)
    if ax is None:
        return exp_loss, exp_grad
    x = np.moveaxis(case.input.astype(np.float64), ax, -1)
    if x.shape[-1] == 0:
        return exp_loss, exp_grad
    bad = np.isnan(x).any(axis=-1) | (x == -np.inf).all(axis=-1)
    if keep is not None:
        bad &= keep.reshape(bad.shape)
    if not bad.any():
        return exp_loss, exp_grad
    if _reduced(case):
        exp_loss = math.nan
    elif case.name in ("log_softmax", "softmax"):
        exp_loss = np.moveaxis(np.asarray(exp_loss, dtype=np.float64).copy(), ax, -1)
        exp_loss[bad] = np.nan
        exp_loss = np.moveaxis(exp_loss, -1, ax)
    else:
        exp_loss = np.asarray(exp_loss, dtype=np.float64).copy()
        exp_loss[bad.reshape(exp_loss.shape)] = np.nan
    if exp_grad is not None:
        g = np.moveaxis(np.asarray(exp_grad, dtype=np.float64).copy(), ax, -1)
        g[bad] = np.nan
        exp_grad = np.moveaxis(g, -1, ax)
    return exp_loss, exp_grad


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_finite_inputs_never_give_nan(name, data):
    """Finite inputs, however large or small, never give NaN: per-element results, reduced losses
    and gradients are finite or (a sum past the dtype's range) infinite. The one documented NaN is
    a mean over nothing (PyTorch's 0 / 0)."""
    case = data.draw(CASES[name](), label="case")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = case.input
    if name != "binary_cross_entropy" and x.size:
        fi = np.finfo(x.dtype)
        picks = np.array([float(fi.max) / 4, -float(fi.max) / 4, float(fi.tiny),
                          float(fi.smallest_subnormal), 0.0, 1e4, -1e4])
        mask = rng.random(x.shape) < 0.3
        x[...] = np.where(mask, rng.choice(picks, size=x.shape), x)
    note(f"{case.name} input={x!r} kwargs={case.kwargs}")
    _, label_err = _expected_label_error(case)
    if label_err is not None:
        with _raises_as_reference(label_err):
            invoke(case, "off")
        return
    loss, grad = invoke(case, "off" if case.grad_kw is None else "new")
    empty_mean = _mean_over_nothing(case)
    assert empty_mean or not np.isnan(loss).any(), loss
    if empty_mean:
        assert math.isnan(loss)
    if grad is not None and not empty_mean:
        assert not np.isnan(grad).any(), grad


def _mean_over_nothing(case):
    return case.kwargs.get("reduction") == "mean" and _divisor_is_zero(case)


def _divisor_is_zero(case):
    if case.name in ("cross_entropy", "nll_loss"):
        x, target, weight = case.args
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        if target.shape == x.shape:
            return c == 0 or math.prod(rs.loss_shape(x.shape)) == 0
        ignore = case.kwargs["ignore_index"]
        t = target.reshape(-1).astype(np.int64)
        valid = t != ignore
        if weight is None:
            return not valid.any()
        return float(np.sum(np.asarray(weight, np.float64)[t[valid]])) == 0.0
    return case.input.size == 0


# ----------------------------------------------------------------------------------------------
# Errors: the documented exception, naming the argument, and nothing written
# ----------------------------------------------------------------------------------------------

COMPLEX, BOOL, OBJECT, TEXT = (np.dtype(np.complex64), np.dtype(bool), np.dtype(object),
                               np.dtype("<U2"))
FLOAT_ONLY = (COMPLEX, np.dtype(np.complex128), BOOL, OBJECT, TEXT, np.dtype(np.int32),
              np.dtype(np.uint8), np.dtype(np.int64))
NOT_NUMERIC = (COMPLEX, BOOL, OBJECT, TEXT)
NOT_INDEX = (COMPLEX, BOOL, OBJECT, TEXT, np.dtype(np.float32), np.dtype(np.float64))

# Per function: (argument name, where it is: a position or a keyword, the dtypes it rejects).
ARRAY_ARGUMENTS = {
    "sigmoid_cross_entropy_loss": [("scores", 0, FLOAT_ONLY), ("targets", 1, (COMPLEX, OBJECT, TEXT))],
    "softmax_with_loss": [("scores", 0, FLOAT_ONLY), ("labels", 1, NOT_NUMERIC)],
    "binary_cross_entropy": [("input", 0, FLOAT_ONLY), ("target", 1, FLOAT_ONLY),
                             ("weight", 2, (COMPLEX, BOOL, OBJECT, TEXT))],
    "binary_cross_entropy_with_logits": [("input", 0, FLOAT_ONLY), ("target", 1, FLOAT_ONLY),
                                         ("weight", 2, NOT_NUMERIC),
                                         ("pos_weight", "pos_weight", NOT_NUMERIC)],
    "cross_entropy": [("input", 0, FLOAT_ONLY), ("target", 1, None), ("weight", 2, NOT_NUMERIC)],
    "nll_loss": [("input", 0, FLOAT_ONLY), ("target", 1, NOT_INDEX), ("weight", 2, NOT_NUMERIC)],
    "log_softmax": [("input", 0, FLOAT_ONLY)],
    "softmax": [("input", 0, FLOAT_ONLY)],
    "sigmoid_cross_entropy_with_logits": [("labels", 0, NOT_NUMERIC), ("logits", 1, FLOAT_ONLY)],
    "softmax_cross_entropy_with_logits": [("labels", 0, NOT_NUMERIC), ("logits", 1, FLOAT_ONLY)],
    "sparse_softmax_cross_entropy_with_logits": [("labels", 0, NOT_INDEX),
                                                 ("logits", 1, FLOAT_ONLY)],
}


def _replace(case, where, value):
    """A copy of the case's (args, kwargs) with one argument replaced."""
    args, kwargs = list(case.args), dict(case.kwargs)
    if isinstance(where, int):
        args[where] = value
    else:
        kwargs[where] = value
    return tuple(args), kwargs


def _call_expecting(case, args, kwargs, exc, argument, with_buffer=True):
    """Calls with a NaN-filled gradient buffer (when the function has one and the input is intact)
    and checks the exception, its message, and that neither the buffer nor any input changed."""
    kwargs = dict(kwargs)
    buffer = None
    if case.grad_kw is not None:
        x = args[case.input_pos]
        if with_buffer and isinstance(x, np.ndarray) and x.dtype.kind == "f" and x is case.input:
            buffer = _sentinel_buffer(case)
            kwargs[case.grad_kw] = buffer
        else:
            kwargs[case.grad_kw] = True
    before = [a.copy() for a in args if isinstance(a, np.ndarray)]
    with pytest.raises(exc) as info:
        case.fn(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{argument}:") or f"{argument}:" in message, message
    if buffer is not None:
        assert np.isnan(buffer).all(), "an output was written by a call that raised"
    for arr, old in zip([a for a in args if isinstance(a, np.ndarray)], before):
        np.testing.assert_array_equal(arr, old)
    return info.value


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_unsupported_dtypes_raise_type_error_naming_the_argument(name, data):
    case = data.draw(CASES[name](), label="case")
    choices = [a for a in ARRAY_ARGUMENTS[name]
               if not (a[0] in ("weight", "pos_weight") and _argument(case, a[1]) is None)]
    argument, where, bad_dtypes = data.draw(st.sampled_from(choices), label="argument")
    original = _argument(case, where)
    if bad_dtypes is None:  # cross_entropy's target: indices or probabilities, by shape
        bad_dtypes = NOT_NUMERIC if original.shape == case.input.shape else NOT_INDEX
    if name == "cross_entropy" and argument == "input" and case.args[1].shape == case.input.shape:
        bad_dtypes = tuple(d for d in bad_dtypes if d.kind != "f")
    bad = data.draw(st.sampled_from(bad_dtypes), label="dtype")
    with np.errstate(all="ignore"):
        value = np.zeros(original.shape, dtype=bad)
    args, kwargs = _replace(case, where, value)
    _call_expecting(case, args, kwargs, TypeError, argument)


def _argument(case, where):
    return case.args[where] if isinstance(where, int) else case.kwargs.get(where)


def _bad_shape(case, argument, original):
    """A shape for `argument` that the function must reject."""
    if argument in ("weight", "pos_weight"):
        if case.name in ("cross_entropy", "nll_loss"):
            return (original.shape[0] + 1,)
        return (3,) + case.input.shape  # would enlarge the loss's shape
    if case.name == "cross_entropy" and argument == "target" or case.name == "nll_loss":
        # One more dimension than the input: never the class-index shape (one fewer) nor the
        # probability shape (the input's), whatever the sizes (an empty input included).
        return (max(original.size, 1) + 1,) + (1,) * case.input.ndim
    return (original.size + 1,)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"log_softmax", "softmax"}))
@given(data=st.data())
def test_mismatched_shapes_raise_value_error_naming_the_argument(name, data):
    case = data.draw(CASES[name](), label="case")
    choices = [a for a in ARRAY_ARGUMENTS[name]
               if a[2] is not FLOAT_ONLY or a[0] in ("target", "labels")]
    choices = [a for a in choices if _argument(case, a[1]) is not None]
    argument, where, _ = data.draw(st.sampled_from(choices), label="argument")
    original = _argument(case, where)
    value = np.zeros(_bad_shape(case, argument, original), dtype=original.dtype)
    args, kwargs = _replace(case, where, value)
    _call_expecting(case, args, kwargs, ValueError, argument)


BAD_OPTIONS = {
    "reduction": ["avg", "MEAN", "", None, 1, b"sum"],
    "label_smoothing": [1.5, math.nan, 1.0000001],
    "normalization": ["bogus", "batch"],
    "axis": [5, -6, 100],
    "dim": [5, -6, 100],
}


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"sigmoid_cross_entropy_with_logits",
                                                       "sparse_softmax_cross_entropy_with_logits"}))
@given(data=st.data())
def test_bad_options_raise_value_error_naming_the_option(name, data):
    case = data.draw(CASES[name](), label="case")
    options = [k for k in ("reduction", "label_smoothing", "normalization", "axis")
               if k in case.kwargs]
    if name in ("log_softmax", "softmax"):
        options = ["dim"]
    elif name == "softmax_cross_entropy_with_logits":
        options = ["axis"]
    option = data.draw(st.sampled_from(options), label="option")
    value = data.draw(st.sampled_from(BAD_OPTIONS[option]), label="value")
    if option in ("axis", "dim") and name != "softmax_with_loss":
        position = 1 if name in ("log_softmax", "softmax") else 2
        args, kwargs = _replace(case, position, value)
    else:
        args, kwargs = _replace(case, option, value)
    _call_expecting(case, args, kwargs, ValueError, option)


@pytest.mark.parametrize("name", GRADIENT_NAMES)
@given(data=st.data())
def test_bad_gradient_buffers_are_rejected_before_anything_is_written(name, data):
    """A provided gradient buffer of the wrong shape, dtype or layout, read-only, or overlapping an
    input other than the gradient's own raises ValueError naming it; a good buffer is untouched
    when another argument is bad."""
    case = data.draw(CASES[name](), label="case")
    x = case.input
    kind = data.draw(st.sampled_from(["shape", "dtype", "strides", "readonly", "overlap"]),
                     label="defect")
    other = [a for i, a in enumerate(case.args) if isinstance(a, np.ndarray) and i != case.input_pos
             and a.dtype == x.dtype and a.shape == x.shape and a.size]
    if kind == "shape":
        buf = np.full((x.size + 1,), np.nan, dtype=x.dtype)
    elif kind == "dtype":
        buf = np.full(x.shape, np.nan, dtype=np.float64 if x.dtype != np.float64 else np.float32)
    elif kind == "strides" and x.ndim and x.size > 1:
        buf = np.full(x.shape[:-1] + (2 * x.shape[-1],), np.nan, dtype=x.dtype)[..., ::2]
        if buf.flags.c_contiguous:
            return
    elif kind == "readonly":
        buf = np.full(x.shape, np.nan, dtype=x.dtype)
        buf.flags.writeable = False
    elif kind == "overlap" and other:
        buf = other[0]
    else:
        return
    kwargs = dict(case.kwargs)
    kwargs[case.grad_kw] = buf
    snapshot = np.array(buf, copy=True)
    before = [a.copy() for a in case.arrays()]
    with pytest.raises(ValueError) as info:
        case.fn(*case.args, **kwargs)
    assert f"{case.grad_kw}:" in str(info.value), str(info.value)
    np.testing.assert_array_equal(buf, snapshot)
    for arr, old in zip(case.arrays(), before):
        np.testing.assert_array_equal(arr, old)


LABEL_FUNCTIONS = ["softmax_with_loss", "cross_entropy", "nll_loss",
                   "sparse_softmax_cross_entropy_with_logits"]


@pytest.mark.parametrize("name", LABEL_FUNCTIONS)
@given(data=st.data())
def test_out_of_range_labels_raise_label_error(name, data):
    """A label outside [0, C) that is not ignored raises LabelError (a ValueError and an
    IndexError) naming the labels, the offending value and its flat index; nothing is written."""
    case = data.draw(CASES[name](), label="case")
    where = 0 if name == "sparse_softmax_cross_entropy_with_logits" else 1
    labels = case.args[where]
    if labels.size == 0 or labels.shape == case.input.shape:
        return  # no label to spoil (probability targets have none)
    x = case.input
    c = x.shape[case.kwargs.get("axis", 1) % x.ndim] if name == "softmax_with_loss" else (
        x.shape[-1] if where == 0 else (x.shape[0] if x.ndim == 1 else x.shape[1]))
    ignore = case.kwargs.get("ignore_label", case.kwargs.get("ignore_index"))
    candidates = [c, c + 5, -1, -7, 2**31]
    info = np.iinfo(labels.dtype) if labels.dtype.kind in "iu" else None
    candidates = [v for v in candidates if v != ignore and
                  (info is None or info.min <= v <= info.max)]
    if not candidates:
        return
    bad_value = data.draw(st.sampled_from(candidates), label="bad label")
    index = data.draw(st.integers(0, labels.size - 1), label="index")
    spoiled = labels.copy()
    spoiled.reshape(-1)[index] = bad_value
    args, kwargs = _replace(case, where, spoiled)
    argument = "labels" if name in ("softmax_with_loss",
                                    "sparse_softmax_cross_entropy_with_logits") else "target"
    if c == 0:  # no class at all: the scores are what is wrong (a ValueError naming them)
        err = _call_expecting(case, args, kwargs, ValueError, "scores" if name ==
                              "softmax_with_loss" else "input")
        assert "class" in str(err)
        return
    err = _call_expecting(case, args, kwargs, xentkit.LabelError, argument)
    assert isinstance(err, ValueError) and isinstance(err, IndexError)
    flat = spoiled.reshape(-1)
    assert 0 <= err.index < flat.size
    assert float(err.value) == float(flat[err.index])
    bad = flat[err.index]
    if name == "softmax_with_loss":
        bad = math.trunc(float(bad))
    assert not 0 <= bad < c and bad != ignore


# ----------------------------------------------------------------------------------------------
# Regressions found by the properties and the fuzzer
# ----------------------------------------------------------------------------------------------

def test_smoothed_mean_over_a_zero_weight_sum_is_nan_as_pytorch():
    """Targets present but all of zero weight: PyTorch's mean is (1 - eps) * (0 / 0) +
    eps / C * (S / 0) = NaN; the smoothing term must not turn it into inf."""
    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    y = np.array([0, 1, 1])
    w = np.array([0.0, 0.0, 1.0, 1.0])
    loss = xentkit.cross_entropy(x, y, w, label_smoothing=0.3)
    assert math.isnan(loss), loss


def test_smoothed_mean_over_a_zero_weight_sum_matches_torch_in_the_gradient():
    torch = pytest.importorskip("torch")
    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]])
    y = np.array([0, 1])
    w = np.array([0.0, 0.0, 1.0, 1.0])
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(y), torch.tensor(w),
                                      label_smoothing=0.3).backward()
    _, grad = xentkit.cross_entropy(x, y, w, label_smoothing=0.3, grad=True)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(xt.grad.numpy()))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_label_error_value_of_a_floating_label_is_the_stored_value(dtype):
    """The value of a LabelError is the label as stored, also where its decimal text in the
    message (9 significant digits for float32) is not exact; found by the out-of-range property
    with a float32 label of 2**31."""
    x = np.zeros((3, 2))
    for bad in (3.3, 2.0**31, -7.9, 1e30 if dtype != np.float16 else 6e4):
        labels = np.array([0.0, 1.0, bad], dtype=dtype)
        with pytest.raises(xentkit.LabelError) as info:
            xentkit.softmax_with_loss(x, labels)
        assert info.value.index == 2
        assert info.value.value == float(labels[2]), (info.value.value, float(labels[2]))
