"""sigmoid_cross_entropy_with_logits, softmax_cross_entropy_with_logits (with axis) and
sparse_softmax_cross_entropy_with_logits: values, gradients (the true derivative), axes, label
dtypes, infinite logits, errors, and PyTorch as a second oracle."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import xentkit
from ref_binary_tf import (assert_array_close, central_difference,
                           sigmoid_tf_ref, softmax_tf_ref, sparse_tf_ref)

sig = xentkit.sigmoid_cross_entropy_with_logits
soft = xentkit.softmax_cross_entropy_with_logits
sparse = xentkit.sparse_softmax_cross_entropy_with_logits
bcel = xentkit.binary_cross_entropy_with_logits

SENTINEL = -12345.5
DTYPES = (np.float16, np.float32, np.float64)
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _logits(rng, shape, dtype, scale=3.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def _soft_labels(rng, shape, axis, dtype, normalized=True):
    z = rng.uniform(size=shape)
    if normalized and len(shape):
        z = z / z.sum(axis=axis, keepdims=True)
    return z.astype(dtype)


def _sentinel_like(x):
    return np.full(x.shape, SENTINEL, dtype=x.dtype)


def _untouched(out):
    return bool(np.all(out == np.asarray(SENTINEL, dtype=out.dtype)))


def _close(actual, expected, dtype, scale=1.0):
    """Array results of a float16 input are rounded float32 computations."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        assert actual.dtype == np.float16 and actual.shape == np.shape(expected)
        np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=2e-3,
                                   atol=2e-3 * scale)
    else:
        assert_array_close(actual, expected, dtype, scale=scale)


# ----------------------------------------------------------------------------------------------
# sigmoid_cross_entropy_with_logits
# ----------------------------------------------------------------------------------------------

SIG_SHAPES = [(), (1,), (9,), (4, 3), (2, 3, 4, 5), (0,), (3, 0, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SIG_SHAPES, ids=str)
def test_sigmoid_against_reference(shape, dtype):
    rng = _rng("sig", shape, np.dtype(dtype).name)
    x = _logits(rng, shape, dtype)
    z = rng.uniform(size=shape)
    z = np.where(rng.uniform(size=shape) < 0.3, np.round(z), z).astype(dtype)
    loss, grad = sig(z, x, grad=True)
    exp_loss, exp_grad = sigmoid_tf_ref(z, x)
    assert isinstance(loss, np.ndarray) and loss.shape == shape and loss.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    _close(loss, exp_loss, dtype, scale=3.0)
    _close(grad, exp_grad, dtype)
    alone = sig(z, x)
    np.testing.assert_array_equal(alone, loss)


def test_sigmoid_labels_converted_to_logits_dtype():
    rng = _rng("sig-conv")
    x = _logits(rng, (5, 4), np.float32)
    z = rng.uniform(size=(5, 4))  # float64 labels
    loss, grad = sig(z, x, grad=True)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    z32 = z.astype(np.float32)
    exp_loss, exp_grad = sigmoid_tf_ref(z32, x)
    assert_array_close(loss, exp_loss, np.float32, scale=3.0)
    assert_array_close(grad, exp_grad, np.float32)
    x16 = x.astype(np.float16)
    loss, grad = sig(z, x16, grad=True)
    assert loss.dtype == np.float16 and grad.dtype == np.float16


def test_sigmoid_infinite_limits(real_dtype):
    inf = np.inf
    x = np.array([inf, -inf, inf, -inf, inf, -inf, 0.0], dtype=real_dtype)
    z = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5], dtype=real_dtype)
    loss, grad = sig(z, x, grad=True)
    np.testing.assert_array_equal(loss[:6], [0.0, 0.0, inf, inf, inf, inf])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 0.0])
    assert loss[6] == pytest.approx(math.log(2), rel=1e-7)


def test_sigmoid_nan_propagates():
    x = np.array([0.0, np.nan, 1.0])
    z = np.array([0.5, 0.5, np.nan])
    loss, grad = sig(z, x, grad=True)
    assert np.isnan(loss[1:]).all() and np.isnan(grad[1:]).all()
    assert np.isfinite(loss[0]) and np.isfinite(grad[0])


def test_sigmoid_finite_differences():
    rng = _rng("sig-fd")
    x = _logits(rng, (3, 5), np.float64)
    z = rng.uniform(size=(3, 5))
    _, grad = sig(z, x, grad=True)
    numeric = central_difference(lambda a: float(sig(z, a).sum()), x.copy(), 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 0.1


@pytest.mark.parametrize("zshape, xshape", [((3,), (4,)), ((2, 3), (3, 2)), ((6,), (2, 3)),
                                            ((1, 3), (3,)), ((), (1,))], ids=str)
def test_sigmoid_shape_mismatch(zshape, xshape):
    out = np.full(xshape, SENTINEL)
    with pytest.raises(ValueError) as info:
        sig(np.zeros(zshape), np.zeros(xshape), grad=out)
    assert str(zshape) in str(info.value) and str(xshape) in str(info.value)
    assert _untouched(out)


def test_sigmoid_outputs_and_in_place(real_dtype):
    rng = _rng("sig-out", real_dtype.name)
    x = _logits(rng, (4, 6), real_dtype)
    z = rng.uniform(size=(4, 6)).astype(real_dtype)
    want_loss, want_grad = sig(z, x, grad=True)
    out = _sentinel_like(x)
    loss, got = sig(z, x, grad=out)
    assert got is out
    np.testing.assert_array_equal(out, want_grad)
    np.testing.assert_array_equal(loss, want_loss)
    saved_z = z.copy()
    loss, got = sig(z, x, grad=x)
    assert got is x
    np.testing.assert_array_equal(x, want_grad)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(z, saved_z)
    with pytest.raises(ValueError):
        sig(z, want_grad.copy(), grad=z)
    np.testing.assert_array_equal(z, saved_z)


# ----------------------------------------------------------------------------------------------
# softmax_cross_entropy_with_logits
# ----------------------------------------------------------------------------------------------

AXES = [
    ((5, 4), -1), ((5, 4), 1), ((5, 4), 0), ((5, 4), -2),
    ((2, 3, 4, 5), -1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -3), ((2, 3, 4, 5), 2),
    ((2, 3, 4, 5), 0), ((2, 3, 4, 5), -4),
    ((6,), 0), ((6,), -1), ((1,), 0),
    ((0, 4), -1), ((3, 0, 5), -1), ((3, 4, 0), 1),
]


@pytest.mark.parametrize("normalized", [True, False], ids=["rows-sum-to-1", "unnormalized"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, axis", AXES, ids=str)
def test_softmax_against_reference(shape, axis, dtype, normalized):
    rng = _rng("soft", shape, axis, np.dtype(dtype).name, normalized)
    x = _logits(rng, shape, dtype)
    z = _soft_labels(rng, shape, axis, dtype, normalized=normalized)
    loss, grad = soft(z, x, axis, grad=True)
    exp_loss, exp_grad = softmax_tf_ref(z, x, axis)
    expected_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    assert isinstance(loss, np.ndarray) and loss.shape == expected_shape and loss.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    _close(loss, exp_loss, dtype, scale=5.0)
    _close(grad, exp_grad, dtype)
    np.testing.assert_array_equal(soft(z, x, axis=axis), loss)


def test_softmax_default_axis_is_last():
    rng = _rng("soft-default")
    x = _logits(rng, (3, 4, 5), np.float64)
    z = _soft_labels(rng, (3, 4, 5), -1, np.float64)
    np.testing.assert_array_equal(soft(z, x), soft(z, x, axis=-1))
    np.testing.assert_array_equal(soft(z, x), soft(z, x, 2))
    assert soft(z, x).shape == (3, 4)


@pytest.mark.parametrize("shape, axis", [((6, 5), -1), ((2, 5, 3), 1), ((4,), 0)], ids=str)
def test_softmax_true_derivative_for_unnormalized_labels(shape, axis):
    """Label rows not summing to 1: the gradient is rowsum(z) * softmax - z (not softmax - z)."""
    rng = _rng("soft-unnorm", shape, axis)
    x = _logits(rng, shape, np.float64)
    z = rng.uniform(0, 2, size=shape)
    loss, grad = soft(z, x, axis, grad=True)
    ax = axis % len(shape)
    p = np.exp(x - x.max(axis=ax, keepdims=True))
    p /= p.sum(axis=ax, keepdims=True)
    rowsum = z.sum(axis=ax, keepdims=True)
    np.testing.assert_allclose(grad, rowsum * p - z, rtol=1e-12, atol=1e-14)
    assert np.abs(grad - (p - z)).max() > 1e-3  # TF's fused formula would differ
    np.testing.assert_allclose(loss, -(z * np.log(p)).sum(axis=ax), rtol=1e-12)
    # Rows summing to 1: the two formulas agree.
    zn = z / rowsum
    _, gn = soft(zn, x, axis, grad=True)
    np.testing.assert_allclose(gn, p - zn, rtol=1e-12, atol=1e-14)
    # Negative label entries are accepted, and the derivative is still the true one.
    zneg = z - 0.7
    loss, grad = soft(zneg, x, axis, grad=True)
    exp_loss, exp_grad = softmax_tf_ref(zneg, x, axis)
    assert_array_close(loss, exp_loss, np.float64, scale=10.0)
    assert_array_close(grad, exp_grad, np.float64)


@pytest.mark.parametrize("shape, axis", [((3, 4), -1), ((2, 3, 4), 1), ((2, 3, 4), 0)], ids=str)
def test_softmax_finite_differences(shape, axis):
    rng = _rng("soft-fd", shape, axis)
    x = _logits(rng, shape, np.float64)
    z = rng.uniform(0, 1.5, size=shape)  # rows not summing to 1
    _, grad = soft(z, x, axis, grad=True)
    numeric = central_difference(lambda a: float(soft(z, a, axis).sum()), x.copy(), 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 0.1


def test_softmax_labels_converted_to_logits_dtype():
    rng = _rng("soft-conv")
    x = _logits(rng, (4, 5), np.float32)
    z = _soft_labels(rng, (4, 5), -1, np.float64)
    loss, grad = soft(z, x, grad=True)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    exp_loss, exp_grad = softmax_tf_ref(z.astype(np.float32), x)
    assert_array_close(loss, exp_loss, np.float32, scale=5.0)
    assert_array_close(grad, exp_grad, np.float32)
    loss, grad = soft(z.astype(np.float16), x.astype(np.float64), grad=True)
    assert loss.dtype == np.float64 and grad.dtype == np.float64


def test_softmax_infinite_logits():
    inf = np.inf
    x = np.array([[inf, 0.0, 0.0],
                  [inf, 0.0, 0.0],
                  [inf, inf, 0.0],
                  [-inf, 0.0, 1.0],
                  [-inf, 0.0, 1.0],
                  [-inf, -inf, 2.0]])
    z = np.array([[1.0, 0.0, 0.0],
                  [0.0, 1.0, 0.0],
                  [1.0, 0.0, 0.0],
                  [0.0, 1.0, 0.0],
                  [1.0, 0.0, 0.0],
                  [0.0, 0.0, 1.0]])
    loss, grad = soft(z, x, grad=True)
    lse = math.log(1 + math.e)
    np.testing.assert_allclose(loss, [0.0, inf, math.log(2), lse, inf, 0.0], rtol=1e-15)
    s1 = 1 / (1 + math.e)
    np.testing.assert_allclose(grad, [[0, 0, 0],
                                      [1, -1, 0],
                                      [-0.5, 0.5, 0],
                                      [0, s1 - 1, 1 - s1],
                                      [-1, s1, 1 - s1],
                                      [0, 0, 0]], rtol=1e-14, atol=0)
    exp_loss, exp_grad = softmax_tf_ref(z, x)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-14)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-14, atol=1e-16)


def test_softmax_zero_label_at_minus_inf_adds_nothing():
    """0 * log(0) is taken as 0: a -inf logit with label 0 gives a finite loss (no NaN)."""
    x = np.array([-np.inf, 0.0, 1.0])
    z = np.array([0.0, 1.0, 0.0])
    loss, grad = soft(z, x, grad=True)
    assert float(loss) == pytest.approx(1.3132616875182228, rel=1e-14)
    np.testing.assert_allclose(grad, [0.0, -0.7310585786300049, 0.7310585786300049], rtol=1e-14)
    assert loss.shape == ()


def test_softmax_nan_propagates():
    x = np.array([[0.0, np.nan, 1.0], [0.5, 0.2, 0.1]])
    z = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss, grad = soft(z, x, grad=True)
    assert math.isnan(loss[0]) and np.isnan(grad[0]).all()
    assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()


@pytest.mark.parametrize("shape, axis", [((3, 4), 2), ((3, 4), -3), ((5,), 1), ((5,), -2)],
                         ids=str)
def test_softmax_axis_out_of_range(shape, axis):
    x = np.zeros(shape)
    out = np.full(shape, SENTINEL)
    with pytest.raises(ValueError, match="axis"):
        soft(np.zeros(shape), x, axis, grad=out)
    assert _untouched(out)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_scalar_logits_raise(axis):
    with pytest.raises(ValueError):
        soft(np.array(1.0), np.array(0.5), axis)


@pytest.mark.parametrize("zshape, xshape", [((3, 4), (4, 3)), ((3, 4), (3, 5)), ((12,), (3, 4)),
                                            ((1, 3, 4), (3, 4)), ((3,), (3, 1))], ids=str)
def test_softmax_shape_mismatch(zshape, xshape):
    out = np.full(xshape, SENTINEL)
    with pytest.raises(ValueError) as info:
        soft(np.zeros(zshape), np.zeros(xshape), grad=out)
    assert str(zshape) in str(info.value) and str(xshape) in str(info.value)
    assert _untouched(out)


def test_softmax_outputs_and_in_place(real_dtype):
    rng = _rng("soft-out", real_dtype.name)
    x = _logits(rng, (3, 5, 4), real_dtype)
    z = _soft_labels(rng, (3, 5, 4), 1, real_dtype)
    want_loss, want_grad = soft(z, x, 1, grad=True)
    out = _sentinel_like(x)
    loss, got = soft(z, x, 1, grad=out)
    assert got is out
    np.testing.assert_array_equal(out, want_grad)
    np.testing.assert_array_equal(loss, want_loss)
    saved_z = z.copy()
    loss, got = soft(z, x, 1, grad=x)
    assert got is x
    np.testing.assert_array_equal(x, want_grad)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(z, saved_z)
    with pytest.raises(ValueError):
        soft(z, want_grad.copy(), 1, grad=z)
    np.testing.assert_array_equal(z, saved_z)
    bad = np.zeros((3, 4, 5), dtype=real_dtype)
    with pytest.raises(ValueError, match="grad"):
        soft(z, want_grad.copy(), 1, grad=bad)


def test_softmax_confident_prediction_keeps_precision():
    x = np.array([0.0, -40.0, -40.0])
    z = np.array([1.0, 0.0, 0.0])
    loss, grad = soft(z, x, grad=True)
    e = math.exp(-40)
    assert grad[0] == pytest.approx(-2 * e / (1 + 2 * e), rel=1e-12)
    assert grad[0] != 0.0
    np.testing.assert_allclose(grad[1:], [e / (1 + 2 * e)] * 2, rtol=1e-12)
    assert float(loss) == pytest.approx(math.log1p(2 * e), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# sparse_softmax_cross_entropy_with_logits
# ----------------------------------------------------------------------------------------------

SPARSE_SHAPES = [(7,), (5, 4), (2, 3, 6), (2, 2, 3, 5), (0, 4), (2, 0, 3), (1, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SPARSE_SHAPES, ids=str)
def test_sparse_against_reference(shape, dtype):
    rng = _rng("sparse", shape, np.dtype(dtype).name)
    x = _logits(rng, shape, dtype)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    loss, grad = sparse(y, x, grad=True)
    exp_loss, exp_grad = sparse_tf_ref(y, x)
    assert isinstance(loss, np.ndarray) and loss.shape == shape[:-1] and loss.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    _close(loss, exp_loss, dtype, scale=5.0)
    _close(grad, exp_grad, dtype)
    np.testing.assert_array_equal(sparse(y, x), loss)


@pytest.mark.parametrize("ldtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_sparse_label_dtypes(ldtype, real_dtype):
    rng = _rng("sparse-ldt", np.dtype(ldtype).name, real_dtype.name)
    x = _logits(rng, (6, 5), real_dtype)
    y = rng.integers(0, 5, size=6)
    loss, grad = sparse(y.astype(ldtype), x, grad=True)
    want_loss, want_grad = sparse(y.astype(np.int64), x, grad=True)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    exp_loss, exp_grad = sparse_tf_ref(y, x)
    assert_array_close(loss, exp_loss, real_dtype, scale=5.0)
    assert_array_close(grad, exp_grad, real_dtype)


def test_sparse_one_dimensional_logits():
    """Logits (C,) with a 0-d label: a 0-d loss."""
    x = np.array([1.0, 2.0, 0.5])
    loss, grad = sparse(np.array(1), x, grad=True)
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    exp_loss, exp_grad = sparse_tf_ref(np.array(1), x)
    assert_array_close(loss, exp_loss, np.float64)
    assert_array_close(grad, exp_grad, np.float64)


@pytest.mark.parametrize("bad, index", [(5, 3), (-1, 0), (7, 5), (-100, 2)])
def test_sparse_out_of_range_label(bad, index, real_dtype):
    rng = _rng("sparse-oor", bad, index)
    x = _logits(rng, (6, 5), real_dtype)
    y = rng.integers(0, 5, size=6)
    y[index] = bad
    out = _sentinel_like(x)
    saved = x.copy()
    with pytest.raises(xentkit.LabelError) as info:
        sparse(y, x, grad=out)
    assert info.value.value == bad
    assert info.value.index == index
    assert str(bad) in str(info.value)
    assert _untouched(out)
    with pytest.raises(IndexError):
        sparse(y, x)
    with pytest.raises(ValueError):
        sparse(y, x, grad=x)
    np.testing.assert_array_equal(x, saved)


@pytest.mark.parametrize("labels, value", [
    (np.array([[0, 1], [2, 200]], dtype=np.uint8), 200),
    (np.array([[0, 1], [2, -3]], dtype=np.int8), -3),
    (np.array([[0, 1], [2, 2**64 - 1]], dtype=np.uint64), 2**64 - 1),
    (np.array([[0, 1], [2, -2**63]], dtype=np.int64), -2**63),
    (np.array([[0, 1], [2, 65535]], dtype=np.uint16), 65535),
    (np.array([[0, 1], [2, 2**31 - 1]], dtype=np.int32), 2**31 - 1),
], ids=lambda v: str(v.dtype) if isinstance(v, np.ndarray) else str(v))
def test_sparse_wild_labels(labels, value):
    x = np.zeros((2, 2, 3))
    with pytest.raises(xentkit.LabelError) as info:
        sparse(labels, x)
    assert info.value.value == value
    assert info.value.index == 3


def test_sparse_zero_classes_with_rows_raises():
    with pytest.raises(ValueError):
        sparse(np.zeros(3, dtype=np.int64), np.zeros((3, 0)))


@pytest.mark.parametrize("lshape, xshape", [((5, 1), (5, 4)), ((6,), (5, 4)), ((5, 4), (5, 4)),
                                            ((4,), (5, 4)), ((2, 5), (5, 2, 4)), ((1,), (4,))],
                         ids=str)
def test_sparse_shape_mismatch(lshape, xshape):
    out = np.full(xshape, SENTINEL)
    with pytest.raises(ValueError) as info:
        sparse(np.zeros(lshape, dtype=np.int64), np.zeros(xshape), grad=out)
    assert str(lshape) in str(info.value) and str(xshape) in str(info.value)
    assert _untouched(out)


def test_sparse_scalar_logits_raise():
    with pytest.raises(ValueError):
        sparse(np.array(0), np.array(1.5))


@pytest.mark.parametrize("ldtype", [np.float64, np.float32, np.bool_])
def test_sparse_non_integer_labels_raise_type_error(ldtype):
    with pytest.raises(TypeError):
        sparse(np.zeros(4, dtype=ldtype), np.zeros((4, 3)))


@pytest.mark.parametrize("xdtype", [np.int64, np.int32, np.bool_])
def test_integer_logits_raise_type_error(xdtype):
    x = np.zeros((4, 3), dtype=xdtype)
    with pytest.raises(TypeError):
        sparse(np.zeros(4, dtype=np.int64), x)
    with pytest.raises(TypeError):
        soft(np.zeros((4, 3)), x)
    with pytest.raises(TypeError):
        sig(np.zeros((4, 3)), x)


def test_sparse_finite_differences():
    rng = _rng("sparse-fd")
    x = _logits(rng, (2, 3, 4), np.float64)
    y = rng.integers(0, 4, size=(2, 3))
    _, grad = sparse(y, x, grad=True)
    numeric = central_difference(lambda a: float(sparse(y, a).sum()), x.copy(), 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)
    assert np.abs(grad).max() > 0.1


def test_sparse_confident_prediction_keeps_precision():
    x = np.array([[0.0, -40.0, -40.0], [-40.0, 3.0, -37.5]])
    y = np.array([0, 1])
    loss, grad = sparse(y, x, grad=True)
    e = math.exp(-40)
    assert grad[0, 0] == pytest.approx(-2 * e / (1 + 2 * e), rel=1e-12)
    assert loss[0] == pytest.approx(math.log1p(2 * e), rel=1e-12)
    exp_loss, exp_grad = sparse_tf_ref(y, x)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-12)
    x32 = np.array([0.0, -20.0, -20.0], dtype=np.float32)
    loss32, grad32 = sparse(np.array(0), x32, grad=True)
    e20 = math.exp(-20)
    assert float(grad32[0]) == pytest.approx(-2 * e20, rel=1e-5)
    assert float(loss32) == pytest.approx(2 * e20, rel=1e-5)


def test_sparse_infinite_logits():
    inf = np.inf
    x = np.array([[inf, 0.0, 0.0], [inf, 0.0, 0.0], [inf, inf, 0.0], [-inf, 0.0, 1.0],
                  [-inf, 0.0, 1.0]])
    y = np.array([0, 1, 1, 1, 0])
    loss, grad = sparse(y, x, grad=True)
    s1 = 1 / (1 + math.e)
    np.testing.assert_allclose(loss, [0.0, inf, math.log(2), math.log(1 + math.e), inf],
                               rtol=1e-15)
    np.testing.assert_allclose(grad, [[0, 0, 0], [1, -1, 0], [0.5, -0.5, 0],
                                      [0, s1 - 1, 1 - s1], [-1, s1, 1 - s1]], rtol=1e-14, atol=0)


def test_sparse_outputs_and_in_place(real_dtype):
    rng = _rng("sparse-out", real_dtype.name)
    x = _logits(rng, (7, 5), real_dtype)
    y = rng.integers(0, 5, size=7)
    want_loss, want_grad = sparse(y, x, grad=True)
    out = _sentinel_like(x)
    loss, got = sparse(y, x, grad=out)
    assert got is out
    np.testing.assert_array_equal(out, want_grad)
    saved_y = y.copy()
    loss, got = sparse(y, x, grad=x)
    assert got is x
    np.testing.assert_array_equal(x, want_grad)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(y, saved_y)
    with pytest.raises(ValueError, match="grad"):
        sparse(y, want_grad.copy(), grad=np.zeros((5, 7), dtype=real_dtype))


# ----------------------------------------------------------------------------------------------
# One sigmoid channel = two softmax channels with logits (0, x)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(9,), (4, 3), (2, 3, 2, 2)], ids=str)
def test_sigmoid_equals_two_channel_softmax(shape, real_dtype):
    rng = _rng("two-channel", shape, real_dtype.name)
    x = _logits(rng, shape, real_dtype)
    t = rng.uniform(size=shape).astype(real_dtype)
    lb, gb = bcel(x, t, reduction="none", grad=True)
    ls, gs = sig(t, x, grad=True)
    stacked_x = np.stack([np.zeros_like(x), x], axis=-1)
    stacked_z = np.stack([1 - t, t], axis=-1)
    lsm, gsm = soft(stacked_z, stacked_x, grad=True)
    rtol = 1e-12 if real_dtype == np.float64 else 2e-5
    atol = 1e-14 if real_dtype == np.float64 else 1e-6
    np.testing.assert_allclose(lb, lsm, rtol=rtol, atol=atol)
    np.testing.assert_allclose(ls, lsm, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gb, gsm[..., 1], rtol=rtol, atol=atol)
    np.testing.assert_allclose(gs, gsm[..., 1], rtol=rtol, atol=atol)
    np.testing.assert_allclose(gsm[..., 0], -gsm[..., 1], rtol=rtol, atol=atol)
    # The class axis in the middle: (N, 2, ...).
    lsm1, gsm1 = soft(np.moveaxis(stacked_z, -1, 0).copy(), np.moveaxis(stacked_x, -1, 0).copy(),
                      axis=0, grad=True)
    np.testing.assert_allclose(lsm1, lsm, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gsm1[1], gb, rtol=rtol, atol=atol)
    # Hard targets: the sparse form with label t.
    hard = (t > 0.5).astype(real_dtype)
    lb, gb = bcel(x, hard, reduction="none", grad=True)
    lsp, gsp = sparse(hard.astype(np.int8), stacked_x, grad=True)
    np.testing.assert_allclose(lb, lsp, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gb, gsp[..., 1], rtol=rtol, atol=atol)
    # Reductions follow from the per-element losses.
    assert bcel(x, t, reduction="sum") == pytest.approx(float(lsm.astype(np.float64).sum()),
                                                        rel=rtol * 10)


# ----------------------------------------------------------------------------------------------
# Inputs untouched, non-contiguous inputs
# ----------------------------------------------------------------------------------------------

def test_inputs_not_modified():
    rng = _rng("unmodified")
    x = _logits(rng, (4, 5), np.float32)
    z = _soft_labels(rng, (4, 5), -1, np.float32)
    y = rng.integers(0, 5, size=4).astype(np.int16)
    saved = (x.copy(), z.copy(), y.copy())
    sig(z, x, grad=True)
    soft(z, x, 0, grad=True)
    soft(z, x, grad=True)
    sparse(y, x, grad=True)
    for a, s in zip((x, z, y), saved):
        np.testing.assert_array_equal(a, s)


def test_non_contiguous_inputs():
    rng = _rng("strided")
    base = _logits(rng, (8, 12), np.float64)
    x = base[::2, ::3]
    z = _soft_labels(rng, (4, 4), -1, np.float64).T
    y = rng.integers(0, 4, size=8)[::2]
    for fn, args in ((sig, (z, x)), (soft, (z, x)), (sparse, (y, x))):
        loss, grad = fn(*args, grad=True)
        want = fn(*(np.ascontiguousarray(a) for a in args), grad=True)
        np.testing.assert_array_equal(loss, want[0])
        np.testing.assert_array_equal(grad, want[1])
    loss, grad = soft(z, x, 0, grad=True)
    exp_loss, exp_grad = softmax_tf_ref(z, x, 0)
    assert_array_close(loss, exp_loss, np.float64, scale=5.0)
    assert_array_close(grad, exp_grad, np.float64)


def test_thread_count_does_not_change_results(restore_threads):
    rng = _rng("threads")
    x = _logits(rng, (4000, 100), np.float32)
    z = _soft_labels(rng, (4000, 100), -1, np.float32)
    y = rng.integers(0, 100, size=4000).astype(np.int32)
    results = []
    for n in (1, 3, 8):
        xentkit.set_num_threads(n)
        results.append([sig(z, x, grad=True), soft(z, x, 0, grad=True), soft(z, x, grad=True),
                        sparse(y, x, grad=True)])
    for other in results[1:]:
        for (la, ga), (lb, gb) in zip(other, results[0]):
            np.testing.assert_array_equal(la, lb)
            np.testing.assert_array_equal(ga, gb)


def test_float16_labels_and_logits():
    rng = _rng("f16")
    x = _logits(rng, (5, 6), np.float16)
    z = _soft_labels(rng, (5, 6), -1, np.float16)
    loss, grad = soft(z, x, grad=True)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    exp_loss, exp_grad = softmax_tf_ref(z, x)
    np.testing.assert_allclose(loss.astype(np.float64), exp_loss, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(grad.astype(np.float64), exp_grad, rtol=2e-3, atol=1e-3)
    out = np.zeros((5, 6), np.float16)
    loss2, got = soft(z, x, grad=out)
    assert got is out
    np.testing.assert_array_equal(out, grad)


# ----------------------------------------------------------------------------------------------
# PyTorch as a second oracle
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(9,), (4, 6), (2, 3, 4, 5)], ids=str)
def test_sigmoid_against_torch(shape, real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-sig", shape, real_dtype.name)
    x = _logits(rng, shape, real_dtype, scale=6.0)
    z = rng.uniform(size=shape).astype(real_dtype)
    loss, grad = sig(z, x, grad=True)
    tx = torch.tensor(x, requires_grad=True)
    tl = F.binary_cross_entropy_with_logits(tx, torch.tensor(z), reduction="none")
    tl.sum().backward()
    _compare_torch(loss, grad, tl, tx.grad, real_dtype)


@pytest.mark.parametrize("shape, axis", [((6, 5), -1), ((6, 5), 0), ((2, 4, 3, 3), 1),
                                         ((2, 4, 3, 3), -1), ((2, 4, 3, 3), 2), ((7,), 0)],
                         ids=str)
@pytest.mark.parametrize("normalized", [True, False])
def test_softmax_against_torch(shape, axis, normalized, real_dtype):
    """Torch's cross_entropy with probability targets is the same loss, and its autograd gradient
    is the true derivative (also for label rows not summing to 1)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-soft", shape, axis, normalized, real_dtype.name)
    x = _logits(rng, shape, real_dtype)
    z = _soft_labels(rng, shape, axis, real_dtype, normalized=normalized)
    loss, grad = soft(z, x, axis, grad=True)
    class_dim = 0 if len(shape) == 1 else 1
    tx = torch.tensor(x, requires_grad=True)
    tl = F.cross_entropy(torch.movedim(tx, axis, class_dim),
                         torch.movedim(torch.tensor(z), axis, class_dim), reduction="none")
    tl.sum().backward()
    # movedim keeps the order of the other axes, so the per-row losses line up.
    _compare_torch(loss, grad, tl, tx.grad, real_dtype)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 7), (1, 4), (5,)], ids=str)
def test_sparse_against_torch(shape, real_dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = _rng("torch-sparse", shape, real_dtype.name)
    x = _logits(rng, shape, real_dtype, scale=4.0)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    loss, grad = sparse(y.astype(np.int32), x, grad=True)
    tx = torch.tensor(x, requires_grad=True)
    flat = tx.reshape(-1, shape[-1])
    tl = F.cross_entropy(flat, torch.tensor(y.reshape(-1), dtype=torch.int64), reduction="none")
    tl.sum().backward()
    _compare_torch(loss, grad, tl.reshape(shape[:-1]), tx.grad, real_dtype)


def _compare_torch(loss, grad, tl, tgrad, dtype):
    dtype = np.dtype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    atol = 1e-14 if dtype == np.float64 else 1e-6
    exp = tl.detach().numpy().astype(np.float64)
    assert loss.dtype == dtype and loss.shape == exp.shape
    np.testing.assert_allclose(loss.astype(np.float64), exp, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad.astype(np.float64), tgrad.numpy().astype(np.float64),
                               rtol=rtol, atol=atol)
