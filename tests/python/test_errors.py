"""Bad input raises the documented exception, with a useful message, before any output is written."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest

import xentkit

swl = xentkit.softmax_with_loss
sce = xentkit.sigmoid_cross_entropy_loss

SENTINEL = -12345.5


def _sentinel_like(x):
    return np.full(x.shape, SENTINEL, dtype=x.dtype)


def _untouched(out):
    return bool(np.all(out == np.asarray(SENTINEL, dtype=out.dtype)))


# ----------------------------------------------------------------------------------------------
# LabelError
# ----------------------------------------------------------------------------------------------

def test_label_error_is_value_and_index_error():
    assert issubclass(xentkit.LabelError, ValueError)
    assert issubclass(xentkit.LabelError, IndexError)


def test_out_of_range_label_message_and_attributes():
    x = np.zeros((6, 4))
    labels = np.array([0, 1, 2, 3, 7, 1])
    out = _sentinel_like(x)
    with pytest.raises(xentkit.LabelError) as info:
        swl(x, labels, diff=out)
    err = info.value
    assert err.value == 7
    assert err.index == 4
    message = str(err)
    assert "labels" in message
    assert re.search(r"\b7\b", message)
    assert re.search(r"\b4\b", message)
    assert _untouched(out)
    # Caught as either base class.
    with pytest.raises(ValueError):
        swl(x, labels)
    with pytest.raises(IndexError):
        swl(x, labels)


def test_label_error_pickles():
    with pytest.raises(xentkit.LabelError) as info:
        swl(np.zeros((2, 3)), np.array([0, 5]))
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is xentkit.LabelError
    assert (copy.value, copy.index) == (5, 1)
    assert str(copy) == str(info.value)


@pytest.mark.parametrize("labels, value", [
    (np.array([0, 1, 10**9], dtype=np.int64), 10**9),
    (np.array([0, 1, 1e30]), 1e30),
    (np.array([0, 1, np.nan]), math.nan),
    (np.array([0, 1, np.inf]), math.inf),
    (np.array([0, 1, -np.inf], dtype=np.float32), -math.inf),
    (np.array([0, 1, 2**63 + 5], dtype=np.uint64), 2**63 + 5),
    (np.array([0, 1, 2**64 - 1], dtype=np.uint64), 2**64 - 1),
    (np.array([0, 1, -2**63], dtype=np.int64), -2**63),
    (np.array([0, 1, -3], dtype=np.int64), -3),
    (np.array([0, 1, -3], dtype=np.int8), -3),
    (np.array([0, 1, 4], dtype=np.uint8), 4),
    (np.array([0, 1, 4.5]), 4.5),
    (np.array([0, 1, -1.5], dtype=np.float32), -1.5),
    (np.array([0, 1, 300], dtype=np.float16), 300),
], ids=lambda v: repr(v) if not isinstance(v, np.ndarray) else f"{v.dtype}:{v[-1]}")
def test_wild_labels(real_dtype, labels, value):
    x = np.zeros((3, 4), dtype=real_dtype)
    out = _sentinel_like(x)
    with pytest.raises(xentkit.LabelError) as info:
        swl(x, labels, diff=out, prob=True)
    err = info.value
    assert err.index == 2
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(err.value)
        assert "nan" in str(err).lower()
    else:
        assert err.value == value
    assert _untouched(out)


def test_label_error_inplace_leaves_scores_unchanged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5))
    saved = x.copy()
    labels = rng.integers(0, 5, size=50)
    labels[-1] = 5
    with pytest.raises(xentkit.LabelError):
        swl(x, labels, diff=x)
    np.testing.assert_array_equal(x, saved)


def test_label_error_large_input_nothing_written(restore_threads):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4096, 64)).astype(np.float32)
    labels = rng.integers(0, 64, size=4096)
    labels[-1] = 64
    labels[3000] = -7
    results = []
    for n in (1, 2, 4):
        xentkit.set_num_threads(n)
        out = _sentinel_like(x)
        with pytest.raises(xentkit.LabelError) as info:
            swl(x, labels, diff=out)
        assert _untouched(out)
        results.append((info.value.value, info.value.index, str(info.value)))
    assert results[0] in [(-7, 3000, results[0][2]), (64, 4095, results[0][2])]
    assert all(r == results[0] for r in results)


def test_label_not_ignored_when_only_equal_after_wrapping():
    x = np.zeros((2, 4))
    # uint8 255 is not -1.
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, 255], dtype=np.uint8), ignore_label=-1)
    # int8 -1 is not 255.
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, -1], dtype=np.int8), ignore_label=255)
    # 2**32 + 1 is not 1, in either direction.
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, 2**32 + 1], dtype=np.int64), ignore_label=1)
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, 2.0**32 + 1]), ignore_label=1)
    loss, diff = swl(x, np.array([0, 1], dtype=np.int64), ignore_label=2**32 + 1)
    assert np.all(diff[1] != 0)
    # Exact matches at the ends of the int64 range are ignored.
    loss, diff = swl(x, np.array([0, -2**63], dtype=np.int64), ignore_label=-2**63)
    assert np.all(diff[1] == 0)
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, 2**63], dtype=np.uint64), ignore_label=-2**63)
    with pytest.raises(xentkit.LabelError):
        swl(x, np.array([0, 9.3e18]), ignore_label=2**63 - 1)


def test_sigmoid_ignore_compares_exactly():
    x = np.zeros(3)
    t = np.array([0.5, 2.0**32 + 1, 1e30])
    _, diff = sce(x, t, ignore_label=1, normalization="none")
    np.testing.assert_allclose(diff, 0.5 - t, rtol=1e-15)
    _, diff = sce(x, t, ignore_label=2**63 - 1, normalization="none")
    assert np.all(diff[1:] != 0)


# ----------------------------------------------------------------------------------------------
# Shapes and counts
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xshape, lshape", [((3, 5, 4), (7,)), ((4, 6), (3,)), ((2, 3, 4), (2, 3))],
                         ids=str)
def test_softmax_count_mismatch(xshape, lshape):
    x = np.zeros(xshape)
    out = _sentinel_like(x)
    with pytest.raises(ValueError) as info:
        swl(x, np.zeros(lshape, dtype=np.int64), diff=out)
    message = str(info.value)
    assert str(xshape) in message
    assert str(lshape) in message
    assert _untouched(out)


@pytest.mark.parametrize("xshape, tshape", [((3, 4), (3, 5)), ((4,), (5,)), ((2, 3), (7,))],
                         ids=str)
def test_sigmoid_count_mismatch(xshape, tshape):
    x = np.zeros(xshape)
    out = _sentinel_like(x)
    with pytest.raises(ValueError) as info:
        sce(x, np.zeros(tshape), diff=out)
    message = str(info.value)
    assert str(xshape) in message
    assert str(tshape) in message
    assert _untouched(out)


@pytest.mark.parametrize("xshape, tshape", [((4, 6), (6, 4)), ((4, 6), (24,)), ((2, 6), (1, 12))],
                         ids=str)
def test_sigmoid_first_dim_mismatch(xshape, tshape):
    x = np.zeros(xshape)
    out = _sentinel_like(x)
    with pytest.raises(ValueError) as info:
        sce(x, np.zeros(tshape), diff=out)
    assert str(xshape) in str(info.value) and str(tshape) in str(info.value)
    assert _untouched(out)


def test_zero_dimensional_scores():
    with pytest.raises(ValueError):
        sce(np.zeros(()), np.zeros(()))
    with pytest.raises(ValueError):
        swl(np.zeros(()), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("shape, lshape", [((3, 0), (3,)), ((3, 0, 4), (12,)), ((0,), (1,))],
                         ids=str)
def test_no_classes_with_positions(shape, lshape):
    with pytest.raises(ValueError):
        swl(np.zeros(shape), np.zeros(lshape, dtype=np.int64), axis=0 if len(shape) == 1 else 1)


_NO_CLASS = "at least one class along the class axis, got 0 classes"


@pytest.mark.parametrize("shape, axis", [((1, 0), -1), ((0,), -1), ((3, 0, 4), 1), ((2, 3, 0), -1)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_probability_rows_over_no_classes(shape, axis, dtype):
    """Rows of zero classes with positions to score raise ValueError (SPEC 1.5), on every
    softmax loss with probability targets; the gradient buffer stays untouched."""
    x = np.zeros(shape, dtype=dtype)
    z = np.zeros(shape, dtype=dtype)
    buf = np.full(shape, np.nan, dtype=dtype)
    with pytest.raises(ValueError, match=_NO_CLASS):
        xentkit.softmax_cross_entropy_with_logits(z, x, axis=axis, grad=buf)
    if axis in (1, -1) and (axis == 1 or len(shape) == 2):  # PyTorch's class dimension is 1
        with pytest.raises(ValueError, match=_NO_CLASS):
            xentkit.cross_entropy(x, z, reduction="none", grad=buf)
        with pytest.raises(ValueError, match=_NO_CLASS):
            xentkit.cross_entropy(x, z, reduction="mean")
    assert np.isnan(buf).all()


def test_no_classes_without_positions_is_empty():
    """A class axis of length 0 with no position to score is an empty input: no error, and the
    softmax functions return their empty results (as PyTorch)."""
    loss, grad = xentkit.softmax_cross_entropy_with_logits(np.zeros((0, 0)), np.zeros((0, 0)),
                                                           grad=True)
    assert loss.shape == (0,) and grad.shape == (0, 0)
    assert xentkit.cross_entropy(np.zeros((0, 0)), np.zeros((0, 0)), reduction="none").shape == (0,)
    for fn in (xentkit.log_softmax, xentkit.softmax):
        assert fn(np.zeros((1, 0)), dim=-1).shape == (1, 0)


def test_empty_softmax():
    for shape, lshape in [((0, 5), (0,)), ((0, 0), (0,)), ((3, 5, 0), (3, 0)), ((0, 5, 2), (0, 2))]:
        for dtype in (np.float16, np.float32, np.float64):
            loss, diff, prob = swl(np.zeros(shape, dtype=dtype), np.zeros(lshape, dtype=np.int64),
                                   prob=True)
            assert loss == 0.0 and isinstance(loss, float)
            assert diff.shape == shape and diff.dtype == dtype
            assert prob.shape == shape
            for mode in ("full", "valid", "batch_size", "none"):
                assert swl(np.zeros(shape), np.zeros(lshape), normalization=mode)[0] == 0.0


def test_empty_sigmoid():
    for shape in [(0,), (0, 3), (3, 0), (0, 2, 2)]:
        for dtype in (np.float16, np.float32, np.float64):
            loss, diff = sce(np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype))
            assert loss == 0.0 and isinstance(loss, float)
            assert diff.shape == shape and diff.dtype == dtype
            assert sce(np.zeros(shape), np.zeros(shape), diff=False) == (0.0, None)


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mode", ["mean", "sum", "", "valid ", "batch"])
def test_unknown_normalization(fn, mode):
    x = np.zeros((3, 4))
    out = _sentinel_like(x)
    with pytest.raises(ValueError, match="normalization"):
        if fn == "softmax":
            swl(x, np.zeros(3), normalization=mode, diff=out)
        else:
            sce(x, np.zeros((3, 4)), normalization=mode, diff=out)
    assert _untouched(out)


@pytest.mark.parametrize("fn", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mode", [1, 0, True, b"valid", ["valid"]])
def test_non_string_normalization(fn, mode):
    with pytest.raises(TypeError, match="normalization"):
        if fn == "softmax":
            swl(np.zeros((3, 4)), np.zeros(3), normalization=mode)
        else:
            sce(np.zeros((3, 4)), np.zeros((3, 4)), normalization=mode)


@pytest.mark.parametrize("fn", ["softmax", "sigmoid"])
def test_bad_normalize_flag(fn):
    with pytest.raises(TypeError, match="normalize"):
        if fn == "softmax":
            swl(np.zeros((3, 4)), np.zeros(3), normalize="yes")
        else:
            sce(np.zeros((3, 4)), np.zeros((3, 4)), normalize=1)


@pytest.mark.parametrize("shape, axis", [((3, 4), 2), ((3, 4), -3), ((5,), 1), ((5,), -2),
                                         ((2, 3, 4), 3), ((2, 3, 4), 100)], ids=str)
def test_axis_out_of_range(shape, axis):
    x = np.zeros(shape)
    out = _sentinel_like(x)
    with pytest.raises(ValueError, match="axis"):
        swl(x, np.zeros(1), axis=axis, diff=out)
    assert _untouched(out)


@pytest.mark.parametrize("axis", [1.0, "1", None, True, np.float64(1)])
def test_non_integer_axis(axis):
    with pytest.raises(TypeError, match="axis"):
        swl(np.zeros((3, 4)), np.zeros(3), axis=axis)


def test_numpy_integer_axis_accepted():
    x = np.random.default_rng(3).normal(size=(3, 4))
    a = swl(x, np.zeros(3, dtype=np.int64), axis=np.int32(1))
    b = swl(x, np.zeros(3, dtype=np.int64), axis=1)
    assert a[0] == b[0]


@pytest.mark.parametrize("value", [1.5, 1.0, "1", True, np.float32(2.0), [1]])
def test_ignore_label_not_integer(value):
    with pytest.raises(TypeError, match="ignore_label"):
        swl(np.zeros((3, 4)), np.zeros(3), ignore_label=value)
    with pytest.raises(TypeError, match="ignore_label"):
        sce(np.zeros((3, 4)), np.zeros((3, 4)), ignore_label=value)


@pytest.mark.parametrize("value", [2**63, -2**63 - 1, 10**30])
def test_ignore_label_beyond_int64(value):
    with pytest.raises(ValueError, match="ignore_label"):
        swl(np.zeros((3, 4)), np.zeros(3), ignore_label=value)
    with pytest.raises(ValueError, match="ignore_label"):
        sce(np.zeros((3, 4)), np.zeros((3, 4)), ignore_label=value)


def test_ignore_label_numpy_integer_accepted():
    x = np.random.default_rng(4).normal(size=(4, 3))
    labels = np.array([0, 2, 1, 2])
    a = swl(x, labels, ignore_label=np.int16(2))
    b = swl(x, labels, ignore_label=2)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("value", [None, [1.0], True, "abc", "1", b"1", object()])
def test_bad_loss_weight(value):
    with pytest.raises(TypeError, match="loss_weight"):
        swl(np.zeros((3, 4)), np.zeros(3), loss_weight=value)
    with pytest.raises(TypeError, match="loss_weight"):
        sce(np.zeros((3, 4)), np.zeros((3, 4)), loss_weight=value)


def test_bad_prob_flag():
    with pytest.raises(TypeError, match="prob"):
        swl(np.zeros((3, 4)), np.zeros(3), prob="yes")


@pytest.mark.parametrize("value", ["yes", 1, 2.0])
def test_bad_diff_argument_type(value):
    with pytest.raises(TypeError, match="diff"):
        swl(np.zeros((3, 4)), np.zeros(3), diff=value)
    with pytest.raises(TypeError, match="diff"):
        sce(np.zeros((3, 4)), np.zeros((3, 4)), diff=value)


# ----------------------------------------------------------------------------------------------
# dtypes and non-arrays
# ----------------------------------------------------------------------------------------------

# long double is a dtype of its own only where it is wider than double (x86-64 Linux, not
# Windows or Apple arm64); where it is double, it is supported and not listed here.
_UNSUPPORTED_SCORES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object,
                       "U3", "S3"]
if np.dtype(np.longdouble) != np.dtype(np.float64):
    _UNSUPPORTED_SCORES.append(np.longdouble)


@pytest.mark.parametrize("dtype", _UNSUPPORTED_SCORES, ids=str)
def test_unsupported_score_dtypes(dtype):
    x = np.zeros((3, 4), dtype=dtype)
    with pytest.raises(TypeError, match="scores"):
        swl(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="scores"):
        sce(x, np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.complex128, object, "U3", "S3",
                                   "M8[s]", "m8[s]"], ids=str)
def test_unsupported_label_dtypes(dtype):
    labels = np.zeros(3, dtype=dtype)
    x = np.zeros((3, 4))
    out = _sentinel_like(x)
    with pytest.raises(TypeError, match="labels"):
        swl(x, labels, diff=out)
    assert _untouched(out)


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3", "M8[s]"], ids=str)
def test_unsupported_target_dtypes(dtype):
    with pytest.raises(TypeError, match="targets"):
        sce(np.zeros((3, 4)), np.zeros((3, 4), dtype=dtype))


@pytest.mark.parametrize("obj", [[[0.0, 1.0]], 1.0, 3, "abc", b"ab", None, {"a": 1}, (0.5, 0.2)],
                         ids=lambda o: type(o).__name__)
def test_non_arrays_raise_type_error(obj):
    with pytest.raises(TypeError, match="scores"):
        swl(obj, np.zeros(1, dtype=np.int64))
    with pytest.raises(TypeError, match="labels"):
        swl(np.zeros((1, 2)), obj)
    with pytest.raises(TypeError, match="scores"):
        sce(obj, np.zeros((1, 2)))
    with pytest.raises(TypeError, match="targets"):
        sce(np.zeros((1, 2)), obj)
