"""Array handling: dtypes, zero-copy inputs, strides, outputs, in-place and buffer objects."""

from __future__ import annotations

import array
import tracemalloc

import numpy as np
import pytest

import xentkit
from references import sigmoid_ref, softmax_ref

swl = xentkit.softmax_with_loss
sce = xentkit.sigmoid_cross_entropy_loss


def _softmax_inputs(seed=0, shape=(8, 5, 3), dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2).astype(dtype)
    labels = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    return x, labels


def _sigmoid_inputs(seed=0, shape=(8, 5, 3), dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2).astype(dtype)
    t = rng.uniform(size=shape).astype(dtype)
    return x, t


def _same(a, b):
    """Same loss and same diff for two calls."""
    assert a[0] == pytest.approx(b[0], rel=1e-14, abs=0)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------

def test_result_types(any_dtype):
    x, labels = _softmax_inputs(dtype=any_dtype)
    loss, diff, prob = swl(x, labels, prob=True)
    assert type(loss) is float
    assert diff.dtype == any_dtype and prob.dtype == any_dtype
    assert diff.shape == x.shape and prob.shape == x.shape
    assert type(diff) is np.ndarray and diff.flags.c_contiguous and diff.flags.writeable
    x, t = _sigmoid_inputs(dtype=any_dtype)
    loss, diff = sce(x, t)
    assert type(loss) is float
    assert diff.dtype == any_dtype and diff.shape == x.shape
    assert type(diff) is np.ndarray and diff.flags.c_contiguous


def test_float16_scores_with_float64_targets():
    x, t = _sigmoid_inputs(dtype=np.float16)
    loss, diff = sce(x, t.astype(np.float64))
    exp_loss, exp_diff = sigmoid_ref(x, t.astype(np.float32))
    assert diff.dtype == np.float16
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-5)
    np.testing.assert_allclose(diff.astype(np.float64), exp_diff, rtol=2e-3, atol=1e-6)


def test_float32_scores_float64_targets_converted():
    """Targets are converted to the scores' dtype."""
    x, t = _sigmoid_inputs(dtype=np.float32)
    t64 = t.astype(np.float64) + 1e-9
    a = sce(x, t64)
    b = sce(x, t64.astype(np.float32))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("order", ["<", ">"])
def test_byte_order(order):
    x, labels = _softmax_inputs(1)
    xs = x.astype(order + "f8")
    ls = labels.astype(order + "i4")
    got = swl(xs, ls)
    want = swl(x, labels)
    _same(got, want)
    assert got[1].dtype.kind == "f" and got[1].dtype.itemsize == 8
    xs, ts = _sigmoid_inputs(1, dtype=np.float32)
    got = sce(xs.astype(order + "f4"), ts.astype(order + "f4"))
    want = sce(xs, ts)
    _same(got, want)
    assert got[1].dtype.itemsize == 4


# ----------------------------------------------------------------------------------------------
# Inputs are neither modified nor copied
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_inputs_unchanged(dtype):
    x, labels = _softmax_inputs(2, dtype=dtype)
    labels[0, 0] = 255
    xb, lb = x.tobytes(), labels.tobytes()
    swl(x, labels, ignore_label=255, prob=True, loss_weight=2.0)
    swl(x, labels, ignore_label=255, diff=np.empty_like(x))
    assert x.tobytes() == xb and labels.tobytes() == lb
    x, t = _sigmoid_inputs(2, dtype=dtype)
    xb, tb = x.tobytes(), t.tobytes()
    sce(x, t, normalization="valid")
    sce(x, t, diff=np.empty_like(x))
    assert x.tobytes() == xb and t.tobytes() == tb


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


@pytest.mark.parametrize("ldtype", [np.int64, np.int32, np.uint8, np.float32, np.float64])
def test_softmax_contiguous_inputs_not_copied(real_dtype, ldtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 50)).astype(real_dtype)
    labels = rng.integers(0, 50, size=20000).astype(ldtype)
    swl(x, labels, diff=False)  # warm-up
    peak = _peak_bytes(lambda: swl(x, labels, diff=False))
    assert peak < 0.05 * labels.nbytes + 65536
    # With a diff, the only large allocation is the diff itself.
    peak = _peak_bytes(lambda: swl(x, labels))
    assert peak < 1.05 * x.nbytes + 65536
    out = np.empty_like(x)
    peak = _peak_bytes(lambda: swl(x, labels, diff=out))
    assert peak < 0.05 * labels.nbytes + 65536


def test_sigmoid_contiguous_inputs_not_copied(real_dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 500)).astype(real_dtype)
    t = rng.uniform(size=(1000, 500)).astype(real_dtype)
    sce(x, t, diff=False)
    peak = _peak_bytes(lambda: sce(x, t, diff=False))
    assert peak < 0.01 * x.nbytes + 65536
    out = np.empty_like(x)
    peak = _peak_bytes(lambda: sce(x, t, diff=out))
    assert peak < 0.01 * x.nbytes + 65536


def test_non_contiguous_inputs_are_copied_not_modified():
    x, labels = _softmax_inputs(5, shape=(400, 30, 2))
    xf = np.asfortranarray(x)
    saved = xf.copy(order="A")
    swl(xf, labels)
    assert xf.flags.f_contiguous
    np.testing.assert_array_equal(xf, saved)


# ----------------------------------------------------------------------------------------------
# Strides
# ----------------------------------------------------------------------------------------------

def _softmax_views(seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(12, 10, 8)) * 2
    return {
        "slice": base[::2, 1::2, :],
        "last-axis-step": base[:, :5, ::2],
        "transpose": base.transpose(0, 2, 1)[:, :, :6],
        "fortran": np.asfortranarray(base[:, :6, :]),
        "reversed": base[::-1, ::-1, ::-1][:, :7, :],
    }


@pytest.mark.parametrize("name", ["slice", "last-axis-step", "transpose", "fortran", "reversed"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_non_contiguous_scores(name, dtype):
    x = _softmax_views(6)[name].astype(dtype, copy=False)
    if name != "fortran" and dtype == np.float64:
        assert not x.flags.c_contiguous
    rng = np.random.default_rng(7)
    labels = rng.integers(0, x.shape[1], size=(x.shape[0], x.shape[2]))
    got = swl(x, labels, prob=True)
    want = swl(np.ascontiguousarray(x), labels, prob=True)
    _same(got, want)
    np.testing.assert_array_equal(got[2], want[2])
    assert got[1].flags.c_contiguous


@pytest.mark.parametrize("axis", [0, 2, -1])
def test_softmax_non_contiguous_other_axes(axis):
    x = _softmax_views(8)["transpose"]
    rng = np.random.default_rng(9)
    lshape = tuple(d for i, d in enumerate(x.shape) if i != axis % 3)
    labels = rng.integers(0, x.shape[axis], size=lshape)
    got = swl(x, labels, axis=axis)
    want = swl(np.ascontiguousarray(x), labels, axis=axis)
    _same(got, want)
    exp_loss, exp_diff, _, _ = softmax_ref(x, labels, axis=axis)
    np.testing.assert_allclose(got[0], exp_loss, rtol=1e-12)


def test_softmax_non_contiguous_labels():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(6, 4, 5))
    big = rng.integers(0, 4, size=(12, 10))
    for labels in (big[::2, ::2], big[:6, :5].T.copy().T, np.asfortranarray(big[:6, :5]),
                   big[::-2, 1::2].astype(np.float32)):
        assert labels.shape == (6, 5)
        got = swl(x, labels)
        want = swl(x, np.ascontiguousarray(labels))
        _same(got, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sigmoid_non_contiguous(dtype):
    rng = np.random.default_rng(11)
    xb = (rng.normal(size=(10, 12, 6)) * 2).astype(dtype)
    tb = rng.uniform(size=(10, 12, 6)).astype(dtype)
    for x, t in ((xb[::2, ::3], tb[::2, ::3]),
                 (xb.transpose(0, 2, 1), tb.transpose(0, 2, 1)),
                 (np.asfortranarray(xb), tb),
                 (xb, np.asfortranarray(tb)),
                 (xb[::-1], tb[::-1])):
        got = sce(x, t, normalization="full")
        want = sce(np.ascontiguousarray(x), np.ascontiguousarray(t), normalization="full")
        _same(got, want)


# ----------------------------------------------------------------------------------------------
# The diff output argument
# ----------------------------------------------------------------------------------------------

def test_diff_false_returns_none():
    x, labels = _softmax_inputs(12)
    loss, diff = swl(x, labels, diff=False)
    assert diff is None
    assert loss == swl(x, labels)[0]
    loss, diff, prob = swl(x, labels, diff=False, prob=True)
    assert diff is None and prob.shape == x.shape
    x, t = _sigmoid_inputs(12)
    loss, diff = sce(x, t, diff=False)
    assert diff is None
    assert loss == sce(x, t)[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_diff_preallocated(dtype):
    x, labels = _softmax_inputs(13, dtype=dtype)
    out = np.full(x.shape, 7.0, dtype=dtype)
    loss, diff = swl(x, labels, diff=out, loss_weight=1.5)
    assert diff is out
    ref_loss, ref_diff = swl(x, labels, loss_weight=1.5)
    assert loss == ref_loss
    np.testing.assert_array_equal(out, ref_diff)
    x, t = _sigmoid_inputs(13, dtype=dtype)
    out = np.full(x.shape, 7.0, dtype=dtype)
    loss, diff = sce(x, t, diff=out, ignore_label=0)
    assert diff is out
    ref = sce(x, t, ignore_label=0)
    assert loss == ref[0]
    np.testing.assert_array_equal(out, ref[1])


def test_diff_preallocated_all_ignored_is_zeroed():
    x, _ = _softmax_inputs(14)
    labels = np.full((8, 3), 255)
    out = np.full(x.shape, np.nan)
    loss, diff = swl(x, labels, ignore_label=255, diff=out)
    assert loss == 0.0 and diff is out and np.all(out == 0)
    x, t = _sigmoid_inputs(14)
    out = np.full(x.shape, np.nan)
    sce(x, np.full_like(t, -1.0), ignore_label=-1, diff=out)
    assert np.all(out == 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_diff_in_place_softmax(dtype):
    x, labels = _softmax_inputs(15, dtype=dtype)
    ref_loss, ref_diff, ref_prob = swl(x.copy(), labels, loss_weight=2.0, prob=True)
    loss, diff, prob = swl(x, labels, diff=x, loss_weight=2.0, prob=True)
    assert diff is x
    assert loss == ref_loss
    np.testing.assert_array_equal(x, ref_diff)
    np.testing.assert_array_equal(prob, ref_prob)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_diff_in_place_sigmoid(dtype):
    x, t = _sigmoid_inputs(16, dtype=dtype)
    ref_loss, ref_diff = sce(x.copy(), t, normalization="valid")
    loss, diff = sce(x, t, diff=x, normalization="valid")
    assert diff is x
    assert loss == ref_loss
    np.testing.assert_array_equal(x, ref_diff)


def test_diff_in_place_on_reshaped_view():
    """A C-contiguous view of the same memory (a reshape) counts as the scores themselves."""
    x, labels = _softmax_inputs(17, shape=(6, 4))
    ref = swl(x.copy(), labels)
    base = x.reshape(-1)
    view = base.reshape(6, 4)
    loss, diff = swl(view, labels, diff=view)
    assert diff is view
    np.testing.assert_array_equal(x, ref[1])


def _bad_outputs(shape, dtype):
    full = np.zeros(shape, dtype=dtype)
    read_only = np.zeros(shape, dtype=dtype)
    read_only.setflags(write=False)
    other = np.float32 if np.dtype(dtype) == np.float64 else np.float64
    wide = np.zeros(shape[:-1] + (shape[-1] * 2,), dtype=dtype)
    return {
        "wrong-shape": np.zeros(shape[::-1], dtype=dtype),
        "flat": full.reshape(-1),
        "extra-axis": full[None],
        "wrong-dtype": np.zeros(shape, dtype=other),
        "non-contiguous": wide[..., ::2],
        "fortran": np.asfortranarray(np.zeros(shape, dtype=dtype)),
        "read-only": read_only,
    }


@pytest.mark.parametrize("kind", ["wrong-shape", "flat", "extra-axis", "wrong-dtype",
                                  "non-contiguous", "fortran", "read-only"])
def test_bad_diff_raises(real_dtype, kind):
    x, labels = _softmax_inputs(18, shape=(5, 4, 3), dtype=real_dtype)
    out = _bad_outputs(x.shape, real_dtype)[kind]
    before = out.copy()
    with pytest.raises(ValueError, match="diff"):
        swl(x, labels, diff=out)
    np.testing.assert_array_equal(out, before)
    x, t = _sigmoid_inputs(18, shape=(5, 4, 3), dtype=real_dtype)
    with pytest.raises(ValueError, match="diff"):
        sce(x, t, diff=out)
    np.testing.assert_array_equal(out, before)


def test_diff_in_place_on_non_contiguous_scores_raises():
    base = np.random.default_rng(19).normal(size=(6, 8))
    x = base[:, ::2]
    saved = base.copy()
    with pytest.raises(ValueError, match="diff"):
        swl(x, np.zeros(6, dtype=np.int64), diff=x)
    np.testing.assert_array_equal(base, saved)


def test_diff_overlapping_targets_raises():
    x, t = _sigmoid_inputs(20, shape=(4, 5))
    saved = t.copy()
    with pytest.raises(ValueError, match="diff"):
        sce(x, t, diff=t)
    np.testing.assert_array_equal(t, saved)
    # Partial overlap: a diff window over a buffer that also holds the targets.
    buf = np.random.default_rng(21).uniform(size=30)
    targets = buf[:20].reshape(4, 5)
    out = buf[10:30].reshape(4, 5)
    before = buf.copy()
    with pytest.raises(ValueError, match="diff"):
        sce(x, targets, diff=out)
    np.testing.assert_array_equal(buf, before)


def test_diff_overlapping_labels_raises():
    n, c = 4, 5
    buf = np.zeros(n * c + n)
    out = buf[: n * c].reshape(n, c)
    labels = buf[n * c - 2: n * c - 2 + n]  # straddles the end of out
    labels[:] = [1.0, 2.0, 0.0, 4.0]
    before = buf.copy()
    x = np.random.default_rng(22).normal(size=(n, c))
    with pytest.raises(ValueError, match="diff"):
        swl(x, labels, diff=out)
    np.testing.assert_array_equal(buf, before)


def test_diff_partially_overlapping_scores_raises():
    buf = np.random.default_rng(23).normal(size=30)
    x = buf[:20].reshape(4, 5)
    out = buf[5:25].reshape(4, 5)
    before = buf.copy()
    with pytest.raises(ValueError, match="diff"):
        swl(x, np.zeros(4, dtype=np.int64), diff=out)
    np.testing.assert_array_equal(buf, before)


# ----------------------------------------------------------------------------------------------
# Read-only inputs and other array-like objects
# ----------------------------------------------------------------------------------------------

def test_read_only_inputs():
    x, labels = _softmax_inputs(24)
    want = swl(x, labels)
    x.setflags(write=False)
    labels.setflags(write=False)
    _same(swl(x, labels), want)
    xs, t = _sigmoid_inputs(24)
    want = sce(xs, t)
    xs.setflags(write=False)
    t.setflags(write=False)
    _same(sce(xs, t), want)


def test_read_only_from_bytes_buffer():
    x = np.random.default_rng(25).normal(size=12)
    ro = np.frombuffer(x.tobytes(), dtype=np.float64).reshape(3, 4)
    assert not ro.flags.writeable
    _same(swl(ro, np.array([0, 1, 3])), swl(x.reshape(3, 4), np.array([0, 1, 3])))


def test_array_array_buffer():
    values = [0.5, -1.0, 2.0, 0.25]
    targets = [1.0, 0.0, 0.5, 1.0]
    got = sce(array.array("d", values), array.array("d", targets))
    want = sce(np.array(values), np.array(targets))
    _same(got, want)
    assert got[1].dtype == np.float64 and got[1].shape == (4,)
    got32 = sce(array.array("f", values), array.array("b", [1, 0, 0, 1]))
    want32 = sce(np.array(values, dtype=np.float32), np.array([1, 0, 0, 1], dtype=np.float32))
    _same(got32, want32)
    assert got32[1].dtype == np.float32
    got = swl(array.array("d", values), array.array("q", [2]), axis=0)
    _same(got, swl(np.array(values), np.array([2]), axis=0))


def test_memoryview_inputs():
    x, labels = _softmax_inputs(26)
    got = swl(memoryview(x), memoryview(labels))
    _same(got, swl(x, labels))
    assert got[1].shape == x.shape
    xs, t = _sigmoid_inputs(26)
    _same(sce(memoryview(xs), memoryview(t)), sce(xs, t))


def test_array_interface_objects():
    class Wrapper:
        def __init__(self, a):
            self._a = a

        def __array__(self, dtype=None, copy=None):
            return self._a if dtype is None else self._a.astype(dtype)

    class Interface:
        def __init__(self, a):
            self.__array_interface__ = a.__array_interface__
            self._keep = a

    x, labels = _softmax_inputs(27)
    want = swl(x, labels)
    _same(swl(Wrapper(x), Wrapper(labels)), want)
    _same(swl(Interface(x), Interface(labels)), want)


def test_ndarray_subclass():
    class Tagged(np.ndarray):
        pass

    x, labels = _softmax_inputs(28)
    got = swl(x.view(Tagged), labels.view(Tagged))
    _same(got, swl(x, labels))
    assert type(got[1]) is np.ndarray
    out = np.empty_like(x).view(Tagged)
    loss, diff = swl(x, labels, diff=out)
    np.testing.assert_array_equal(np.asarray(out), got[1])


def test_bytearray_is_not_an_array():
    with pytest.raises(TypeError, match="scores"):
        sce(bytearray(16), np.zeros(16))
