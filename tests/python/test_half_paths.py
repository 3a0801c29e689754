"""float16 storage computed in float32 (cross_entropy, softmax_with_loss, BCE with logits, the
sigmoid layer): against float64 formulas, against the float32 kernels on the same values, at every
instruction-set level, in place, on views and on chunk edges."""

from __future__ import annotations

import numpy as np
import pytest

import ref_softmax_family as ref
import references as caffe_ref
import xentkit

F16 = np.float16


def _close16(actual, expected):
    assert actual.dtype == F16
    a = actual.astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    # One float16 rounding of a float32 result: half an ulp of float16 (2^-11 relative), or half
    # the subnormal step 2^-24 for values below float16's normal range.
    np.testing.assert_allclose(a, e, rtol=2 ** -10, atol=2 ** -24, equal_nan=True)


@pytest.mark.parametrize("shape", [(7, 10), (300, 37), (3, 8300), (2, 5, 70), (2, 21, 16, 16),
                                   (4, 2, 100), (2, 3, 8, 40)])
def test_cross_entropy_float16(level, shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    x = (rng.normal(size=shape) * 3).astype(F16)
    c = shape[1]
    t = rng.integers(0, c, size=(shape[0],) + shape[2:])
    t.reshape(-1)[::7] = -100
    loss, grad = xentkit.cross_entropy(x, t, grad=True)
    want_loss, want_grad = ref.cross_entropy(x.astype(np.float64), t)
    assert isinstance(loss, float)
    assert loss == pytest.approx(float(np.float16(want_loss)), rel=2 ** -10)
    _close16(grad, want_grad)
    per = xentkit.cross_entropy(x, t, reduction="none")
    want_per, _ = ref.cross_entropy(x.astype(np.float64), t, reduction="none")
    assert per.dtype == F16 and per.shape == want_per.shape
    _close16(per, want_per)
    # The same numbers as the float32 kernels on the same values, rounded once.
    l32, g32 = xentkit.cross_entropy(x.astype(np.float32), t, grad=True)
    assert loss == float(np.float16(l32))
    assert np.array_equal(grad, g32.astype(F16))


@pytest.mark.parametrize("shape,axis", [((9, 40), 1), ((2, 19, 48), 1), ((3, 6, 5, 7), 2)])
def test_softmax_with_loss_float16(level, shape, axis):
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 4).astype(F16)
    c = shape[axis]
    labels = rng.integers(0, c, size=shape[:axis] + shape[axis + 1:]).astype(np.uint8)
    labels.reshape(-1)[::5] = 255
    loss, diff, prob = xentkit.softmax_with_loss(x, labels, axis=axis, ignore_label=255,
                                                 prob=True, loss_weight=2.0)
    want_loss, want_diff, want_prob, _ = caffe_ref.softmax_ref(
        x.astype(np.float64), labels, axis=axis, ignore_label=255, loss_weight=2.0)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    _close16(diff, want_diff)
    _close16(prob, want_prob)
    l32, d32, p32 = xentkit.softmax_with_loss(x.astype(np.float32), labels, axis=axis,
                                              ignore_label=255, prob=True, loss_weight=2.0)
    assert loss == l32
    assert np.array_equal(diff, d32.astype(F16)) and np.array_equal(prob, p32.astype(F16))


@pytest.mark.parametrize("n", [1, 17, 16384, 16384 * 2 + 3])
def test_sigmoid_family_float16(level, n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n,)) * 6).astype(F16)
    t = rng.uniform(size=n).astype(F16)
    loss, grad = xentkit.binary_cross_entropy_with_logits(x, t, reduction="mean", grad=True)
    per = caffe_ref.sigmoid_elementwise(x.astype(np.float64), t.astype(np.float64))
    assert loss == pytest.approx(float(np.float16(per.mean())), rel=2 ** -10)
    _close16(grad, (caffe_ref.stable_sigmoid(x.astype(np.float64)) - t.astype(np.float64)) / n)
    none = xentkit.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert none.dtype == F16
    _close16(none, per)
    caffe_loss, diff = xentkit.sigmoid_cross_entropy_loss(x.reshape(1, -1), t.reshape(1, -1))
    assert caffe_loss == pytest.approx(per.sum(), rel=1e-5)
    assert diff.dtype == F16
    _close16(diff.reshape(-1), caffe_ref.stable_sigmoid(x.astype(np.float64)) - t)


def test_bce_with_logits_float16_weights_broadcast():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 600)).astype(F16)  # 24000 elements: two chunks
    t = rng.uniform(size=x.shape).astype(F16)
    w = rng.uniform(0.5, 2, size=600).astype(np.float32)
    pw = rng.uniform(0.5, 3, size=600).astype(np.float32)
    loss, grad = xentkit.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, grad=True)
    l32, g32 = xentkit.binary_cross_entropy_with_logits(x.astype(np.float32), t.astype(np.float32),
                                                        w, pos_weight=pw, grad=True)
    assert loss == float(np.float16(l32))
    assert np.array_equal(grad, g32.astype(F16))


def test_sigmoid_layer_float16_ignore_valid():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 50)).astype(F16)
    t = rng.integers(0, 2, size=x.shape).astype(F16)
    t[::2, ::3] = -1
    loss, diff = xentkit.sigmoid_cross_entropy_loss(x, t, ignore_label=-1, normalization="valid")
    l32, d32 = xentkit.sigmoid_cross_entropy_loss(x.astype(np.float32), t.astype(np.float32),
                                                  ignore_label=-1, normalization="valid")
    assert loss == l32 and np.array_equal(diff, d32.astype(F16))
    assert np.all(diff[t == -1] == 0)


def test_float16_in_place_views_and_non_finite():
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(50, 33)) * 3).astype(F16)
    x[4, 7] = np.nan
    x[9, 0] = np.inf
    t = rng.integers(0, 33, size=50)
    loss, grad = xentkit.cross_entropy(x, t, grad=True, reduction="sum")
    l32, g32 = xentkit.cross_entropy(x.astype(np.float32), t, grad=True, reduction="sum")
    assert np.isnan(loss) and np.isnan(l32)
    assert np.array_equal(grad, g32.astype(F16), equal_nan=True)
    y = x.copy()
    out = xentkit.cross_entropy(y, t, grad=y, reduction="sum")[1]
    assert out is y and np.array_equal(y, grad, equal_nan=True)
    # A strided view is copied once; a big-endian array takes the general path; same numbers.
    wide = np.zeros((50, 66), dtype=F16)
    wide[:, ::2] = x
    g_view = xentkit.cross_entropy(wide[:, ::2], t, grad=True, reduction="sum")[1]
    g_be = xentkit.cross_entropy(x.astype(">f2"), t, grad=True, reduction="sum")[1]
    assert np.array_equal(g_view, grad, equal_nan=True)
    assert np.array_equal(g_be.astype(F16), grad, equal_nan=True)


def test_float16_label_error_writes_nothing():
    x = np.ones((3, 4), dtype=F16)
    g = np.full_like(x, 7)
    with pytest.raises(xentkit.LabelError):
        xentkit.cross_entropy(x, np.array([0, 4, 1]), grad=g)
    assert np.all(g == 7)


def test_float16_identical_across_thread_counts(restore_threads):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(700, 1000)).astype(F16)
    t = rng.integers(0, 1000, size=700)
    s = rng.normal(size=(2, 21, 130, 130)).astype(F16)
    st = rng.integers(0, 21, size=(2, 130, 130))
    runs = []
    for n in (1, 2, 3):
        xentkit.set_num_threads(n)
        a = xentkit.cross_entropy(x, t, grad=True)
        b = xentkit.cross_entropy(s, st, grad=True)
        runs.append((a[0], a[1].tobytes(), b[0], b[1].tobytes()))
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_float16_outputs_round_to_nearest_even():
    # Softmax probabilities of a float16 input are the float32 ones rounded to nearest even,
    # subnormals and all.
    rng = np.random.default_rng(13)
    x = (rng.normal(size=(64, 300)) * 6).astype(F16)
    labels = np.zeros(64, dtype=np.int32)
    _, _, p16 = xentkit.softmax_with_loss(x, labels, prob=True)
    _, _, p32 = xentkit.softmax_with_loss(x.astype(np.float32), labels, prob=True)
    assert np.array_equal(p16, p32.astype(F16))
    assert (p16 < np.finfo(F16).tiny).any() and (p16 > 0).any()
