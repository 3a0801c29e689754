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
    except rs.ReferenceLabelError as err:
        return None, err
    except (ValueError, IndexError) as err:  # the other references' words for a bad label
        if "label out of range" in str(err):
            return None, err
        raise


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
        fin = np.isfinite(expected)
        big = float(np.max(np.abs(expected[fin]))) if fin.any() else 1.0
        np.testing.assert_allclose(actual[fin], expected[fin], rtol=rtol, atol=rtol * max(1.0, big))
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
        with pytest.raises(xentkit.LabelError):
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
        with pytest.raises(xentkit.LabelError):
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
        with pytest.raises(xentkit.LabelError):
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
