"""The vectorised float32 kernels at every instruction-set level this machine runs, the hand-back of
non-finite rows to the scalar kernels, the short path of cross_entropy, and the accuracy of a
float32 loss over 10^8 elements."""

from __future__ import annotations

import numpy as np
import pytest

import ref_binary_tf as rb
import ref_softmax_family as ref
import references as caffe_ref
import xentkit

LEVELS = xentkit.simd_levels_available()


def _close(actual, expected, rtol=1e-5, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol, equal_nan=True)


def test_levels_listed():
    assert LEVELS[-1] == "scalar"
    assert xentkit.simd_level() in LEVELS
    assert len(set(LEVELS)) == len(LEVELS)


def test_set_simd_level_rejects_bad_names():
    before = xentkit.simd_level()
    with pytest.raises(ValueError, match="sse9"):
        xentkit.set_simd_level("sse9")
    with pytest.raises(TypeError):
        xentkit.set_simd_level(3)
    assert xentkit.simd_level() == before
    xentkit.set_simd_level("auto")
    assert xentkit.simd_level() == LEVELS[0]
    xentkit.set_simd_level(before)


@pytest.mark.parametrize("channels", [1, 2, 10, 15, 16, 17, 31, 100, 1000, 5000])
@pytest.mark.parametrize("weighted", [False, True])
def test_rows_agree_with_reference(level, channels, weighted):
    rng = np.random.default_rng(channels * 7 + weighted)
    n = 37
    x = (rng.normal(size=(n, channels)) * 4).astype(np.float32)
    t = rng.integers(0, channels, size=n)
    t[::5] = -100
    w = rng.uniform(0.2, 3.0, size=channels).astype(np.float32) if weighted else None
    loss, grad = xentkit.cross_entropy(x, t, w, grad=True)
    want_loss, want_grad = ref.cross_entropy(x, t, w)
    _close(loss, want_loss)
    _close(grad, want_grad, rtol=1e-5, atol=2e-6 * np.abs(want_grad).max())
    per = xentkit.cross_entropy(x, t, w, reduction="none")
    want_per, _ = ref.cross_entropy(x, t, w, reduction="none")
    _close(per, want_per, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("channels", list(range(1, 34)) + [100, 150])
def test_every_narrow_class_count(level, channels):
    """Rows of every class count up to 33 (the kernels specialised per C <= 16, the generic ones
    above) and 100, 150: 53 rows (three blocks of 16 and a tail), weighted, ignored labels, a row
    with a NaN and one with -inf inside a full block, loss, gradient and softmax against float64,
    the gradient written in place equal to the one written apart;
    and for 3 <= C <= 16 the rows of the full blocks without a NaN (0-15, 32-47) equal, bit for
    bit, the same logits laid out as positions (class axis 1 of (1, C, 53)): the positions kernel
    runs the same operations in the same order (tails and NaN blocks take other, equally exact,
    paths). Rows of two take the logistic form instead (test_two_class_rows_are_logistic)."""
    rng = np.random.default_rng(1000 + channels)
    n = 53
    x = (rng.normal(size=(n, channels)) * 3).astype(np.float32)
    t = rng.integers(0, channels, size=n)
    t[::7] = -100
    # labels in the last vector's lanes: the row's last class and the first class of the last
    # 16 (rows of more than 16 classes end with one full vector over their last 16, overlapping
    # the one before it)
    t[1] = channels - 1
    t[2] = max(channels - 16, 0)
    w = rng.uniform(0.5, 2.0, size=channels).astype(np.float32)
    x[20, channels // 2] = np.nan
    if channels > 1:
        x[37, 0] = -np.inf
    loss, grad = xentkit.cross_entropy(x, t, w, reduction="none", grad=True)
    finite = ~np.isnan(x).any(axis=1)
    want_loss, want_grad = ref.cross_entropy(x[finite], t[finite], w, reduction="none")
    _close(loss[finite], want_loss, rtol=2e-6, atol=1e-7)
    _close(grad[finite], want_grad, rtol=1e-5, atol=1e-7)
    assert np.isnan(loss[20]) and np.isnan(grad[20]).all()
    # the gradient written over the logits themselves: the same numbers, bit for bit
    xi = x.copy()
    loss_i, grad_i = xentkit.cross_entropy(xi, t, w, reduction="none", grad=xi)
    assert grad_i is xi
    assert np.array_equal(loss_i, loss, equal_nan=True)
    assert np.array_equal(grad_i, grad, equal_nan=True)
    mean = xentkit.cross_entropy(x[finite], t[finite], w)
    want_mean, _ = ref.cross_entropy(x[finite], t[finite], w)
    _close(mean, want_mean, rtol=2e-6)
    p = xentkit.softmax(x[finite], dim=1)
    z = x[finite].astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    _close(p, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-8)
    if 3 <= channels <= 16:
        xp = np.ascontiguousarray(x.T[None])
        lp, gp = xentkit.cross_entropy(xp, t[None], w, reduction="none", grad=True)
        same = np.r_[0:16, 32:48]
        assert np.array_equal(lp[0][same], loss[same])
        assert np.array_equal(gp[0].T[same], grad[same])


@pytest.mark.parametrize("channels", [3, 8, 9, 16, 21, 150])
def test_float_partial_sums_worst_case(level, channels):
    """The exps of a position's classes are summed in float 8 at a time: the worst case is the
    max's e = 1 followed by exps just below half an ulp of 1, each of which a float sum drops.
    Loss and gradient stay within 6e-7 relative of float64 (8 roundings and the result's own),
    in the row layout and in the class-axis-1 layout (bit for bit the same for C <= 16)."""
    n = 40
    x = np.full((n, channels), np.log(2.0**-24 * 0.999)).astype(np.float32)
    x[:, 0] = 0.0
    x[1::2, 1] = -3.0
    t = np.full(n, channels - 1)
    t[::4] = 0
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    s = e.sum(axis=1)
    want_loss = np.log(s) - z[np.arange(n), t]
    want_grad = e / s[:, None]
    want_grad[np.arange(n), t] -= 1
    rows = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    pos = xentkit.cross_entropy(np.ascontiguousarray(x.T[None]), t[None], reduction="none",
                                grad=True)
    for loss, grad in [rows, (pos[0][0], pos[1][0].T)]:
        np.testing.assert_allclose(loss, want_loss, rtol=6e-7, atol=0)
        np.testing.assert_allclose(grad, want_grad, rtol=6e-7, atol=0)
    if channels <= 16:
        assert np.array_equal(rows[0][:32], pos[0][0][:32])
        assert np.array_equal(rows[1][:32], pos[1][0].T[:32])


def _logistic_reference(x, t, w=None):
    """Two-class cross entropy per row from d = x[other] - x[label] rounded to float32 (as any
    float32 kernel must form it), then in float64: loss max(d, 0) + log1p(exp(-|d|)), gradient
    +-sigmoid(d) (relative precision kept where it is tiny); ignored rows 0."""
    n = len(t)
    keep = t >= 0
    tl = np.where(keep, t, 0)
    d = (x[np.arange(n), 1 - tl] - x[np.arange(n), tl]).astype(np.float32).astype(np.float64)
    loss = np.maximum(d, 0) + np.log1p(np.exp(-np.abs(d)))
    p = np.where(d > 0, 1 / (1 + np.exp(-d)), np.exp(d) / (1 + np.exp(d)))
    a = np.ones(n) if w is None else w.astype(np.float64)[tl]
    grad = np.zeros((n, 2))
    grad[np.arange(n), 1 - tl] = p * a
    grad[np.arange(n), tl] = -p * a
    return np.where(keep, loss * a, 0.0), np.where(keep[:, None], grad, 0.0)


@pytest.mark.parametrize("scale", [0.5, 4, 40])
def test_two_class_rows_are_logistic(level, scale):
    """Rows of two classes (binary classifiers) against the float64 logistic form within a few
    float32 ulps, also where p[other] is tiny (the gradient at the label keeps its relative
    precision, no 1 - p cancellation), with weights and ignored rows, in place equal to apart,
    and the mean equal to the sum of the per-row losses over the kept weight."""
    rng = np.random.default_rng(int(scale * 10))
    n = 16 * 40 + 5
    x = (rng.normal(size=(n, 2)) * scale).astype(np.float32)
    x[3] = [0.0, 85.0]    # -log p = 85, p[label] = e^-85 (near FLT_MIN)
    x[4] = [30.0, 0.0]    # p[other] = e^-30: a tiny gradient
    x[5] = [-1e-3, 1e-3]
    t = rng.integers(0, 2, size=n)
    t[3:6] = 0
    t[::9] = -100
    t[3:6] = 0
    w = np.array([0.75, 2.5], np.float32)
    loss, grad = xentkit.cross_entropy(x, t, w, reduction="none", grad=True)
    want_loss, want_grad = _logistic_reference(x, t, w)
    tiny = 1.2e-38 * 3  # exp underflows to 0 below FLT_MIN's range (|d| > 87.3)
    np.testing.assert_allclose(loss, want_loss, rtol=8 * 2.0**-24, atol=tiny)
    np.testing.assert_allclose(grad, want_grad, rtol=8 * 2.0**-24, atol=tiny)
    assert grad[4, 1] > 0 and abs(grad[4, 1] / want_grad[4, 1] - 1) < 1e-6
    assert loss[3] == pytest.approx(85.0 * 0.75, rel=1e-7)
    assert np.all(grad[t < 0] == 0) and not np.signbit(grad[t < 0]).any()
    xi = x.copy()
    li, gi = xentkit.cross_entropy(xi, t, w, reduction="none", grad=xi)
    assert gi is xi and np.array_equal(li, loss) and np.array_equal(gi, grad)
    mean, gm = xentkit.cross_entropy(x, t, w, grad=True)
    kept = w.astype(np.float64)[t[t >= 0]].sum()
    assert mean == pytest.approx(want_loss.sum() / kept, rel=1e-6)
    np.testing.assert_allclose(gm, want_grad / kept, rtol=1e-6, atol=tiny)
    # Caffe's layer caps -log p at -log(FLT_MIN) and keeps the gradient uncapped.
    xc = np.array([[0.0, 120.0]] * 16 + [[1.0, 0.0]] * 16, np.float32)
    lc, dc = xentkit.softmax_with_loss(xc, np.zeros(32, np.int64), normalization="none")
    assert lc == pytest.approx(16 * -np.log(np.finfo(np.float32).tiny) + 16 * np.log1p(np.exp(-1.0)),
                               rel=1e-6)
    assert np.all(dc[:16] == [-1.0, 1.0])


@pytest.mark.parametrize("inner", [16 * 40, 16 * 40 + 5])
def test_two_classes_on_the_class_axis_are_logistic(level, inner):
    """(N, 2, ...) with the class axis 1 (binary segmentation) takes the logistic form as rows of
    two do: whole groups of 16 positions equal bit for bit to the same rows laid out (N*HW, 2),
    with weights and ignored positions; all of it (the tail too) within a few float32 ulps of
    the float64 logistic form; a group with a NaN gives NaN at its position only; in place
    equal to apart; z-loss and softmax output keep the softmax form."""
    rng = np.random.default_rng(inner)
    x = (rng.normal(size=(3, 2, inner)) * 6).astype(np.float32)
    x[0, :, 7] = [0.0, 85.0]
    t = rng.integers(0, 2, size=(3, inner))
    t[:, ::9] = -100
    t[0, 7] = t[1, 10] = 0
    x[1, :, 10] = [30.0, 0.0]
    w = np.array([0.75, 2.5], np.float32)
    loss, grad = xentkit.cross_entropy(x, t, w, reduction="none", grad=True)
    rows = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, 2)
    lr, gr = xentkit.cross_entropy(rows, t.reshape(-1), w, reduction="none", grad=True)
    lr, gr = lr.reshape(3, inner), np.moveaxis(gr.reshape(3, inner, 2), -1, 1)
    whole = inner // 16 * 16
    if inner % 16 == 0:  # the rows' blocks of 16 are then the positions' groups
        assert np.array_equal(loss[:, :whole], lr[:, :whole])
        assert np.array_equal(grad[:, :, :whole], gr[:, :, :whole])
    want_loss, want_grad = _logistic_reference(rows, t.reshape(-1), w)
    want_grad = np.moveaxis(want_grad.reshape(3, inner, 2), -1, 1)
    tiny = 1.2e-38 * 3
    np.testing.assert_allclose(loss, want_loss.reshape(3, inner), rtol=8 * 2.0**-24, atol=tiny)
    np.testing.assert_allclose(grad, want_grad, rtol=8 * 2.0**-24, atol=tiny)
    assert loss[0, 7] == pytest.approx(85.0 * 0.75, rel=1e-7)
    assert grad[1, 1, 10] > 0 and abs(grad[1, 1, 10] / want_grad[1, 1, 10] - 1) < 1e-6
    xi = x.copy()
    li, gi = xentkit.cross_entropy(xi, t, w, reduction="none", grad=xi)
    assert gi is xi and np.array_equal(li, loss) and np.array_equal(gi, grad)
    xn = x.copy()
    xn[2, 1, 20] = np.nan
    ln, gn = xentkit.cross_entropy(xn, t, w, reduction="none", grad=True)
    bad = np.zeros_like(loss, bool)
    bad[2, 20] = True
    assert np.isnan(ln[bad]).all() and np.isnan(gn[:, :, 20][2]).all()
    np.testing.assert_allclose(ln[~bad], loss[~bad], rtol=8 * 2.0**-24, atol=tiny)
    # With z-loss the softmax form runs (no logistic shortcut): against float64.
    lz = xentkit.cross_entropy(x, t, w, reduction="none", z_loss=1e-3)
    z = x.astype(np.float64)
    lse = np.logaddexp(z[:, 0], z[:, 1])
    tl = np.where(t >= 0, t, 0)
    nll = lse - np.take_along_axis(z, tl[:, None], 1)[:, 0]
    want_z = np.where(t >= 0, (nll + 1e-3 * lse**2) * w.astype(np.float64)[tl], 0.0)
    np.testing.assert_allclose(lz, want_z, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("rows", [16 * 700, 16 * 700 + 9])
@pytest.mark.parametrize("channels", [2, 3, 7, 8, 9, 15, 16])
def test_narrow_rows_split_across_threads(level, channels, rows, restore_threads):
    """Narrow rows split among threads, with a row count that is a multiple of the 16-row block
    and one that is not (each thread's last block is read without going past its rows): results
    against float64, equal bit for bit at 1 and 3 threads, and in place (the gradient written
    over the logits) equal to apart."""
    rng = np.random.default_rng(channels * 31 + rows)
    x = (rng.normal(size=(rows, channels)) * 4).astype(np.float32)
    t = rng.integers(0, channels, size=rows)
    t[::11] = -100
    xentkit.set_num_threads(1)
    one = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    want_loss, want_grad = ref.cross_entropy(x, t, reduction="none")
    _close(one[0], want_loss, rtol=2e-6, atol=1e-7)
    _close(one[1], want_grad, rtol=1e-5, atol=1e-7)
    xentkit.set_num_threads(3)
    three = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    assert np.array_equal(one[0], three[0]) and np.array_equal(one[1], three[1])
    xi = x.copy()
    loss_i, grad_i = xentkit.cross_entropy(xi, t, reduction="none", grad=xi)
    assert grad_i is xi
    assert np.array_equal(loss_i, one[0]) and np.array_equal(grad_i, one[1])


@pytest.mark.parametrize("inner", [1, 7, 467, 4096])
@pytest.mark.parametrize("channels", [2, 3, 16, 21, 40, 150, 256, 300])
def test_spatial_layouts_agree_with_reference(level, channels, inner):
    """Class axis 1 with inner = 1 (rows), 7 (a group's tail only), 467 (three tiles of 8
    groups of 16 positions, a tile of 4, one of 1 and a tail of 3) and 4096 (whole tiles):
    mean loss, gradient and per-position losses against float64, and the result at one thread
    equal bit for bit to the one at three. Up to 32 classes the tiles are packed on the stack,
    up to 256 in the thread's buffer, 300 in tiles of 4 (and C > 2048 would not be packed)."""
    rng = np.random.default_rng(channels * 10007 + inner)
    outer = 3 if inner < 4096 else 2
    x = (rng.normal(size=(outer, channels, inner)) * 3).astype(np.float32)
    t = rng.integers(0, channels, size=(outer, inner))
    t.reshape(-1)[::5] = -100
    loss, grad = xentkit.cross_entropy(x, t, grad=True)
    want_loss, want_grad = ref.cross_entropy(x, t)
    _close(loss, want_loss, rtol=2e-6)
    _close(grad, want_grad, rtol=1e-5, atol=2e-6 * np.abs(want_grad).max())
    per = xentkit.cross_entropy(x, t, reduction="none")
    want_per, _ = ref.cross_entropy(x, t, reduction="none")
    _close(per, want_per, rtol=2e-6, atol=1e-7)
    before = xentkit.get_num_threads()
    try:
        xentkit.set_num_threads(1)
        one = xentkit.cross_entropy(x, t, grad=True)
        xentkit.set_num_threads(3)
        three = xentkit.cross_entropy(x, t, grad=True)
    finally:
        xentkit.set_num_threads(before)
    assert one[0] == three[0] and np.array_equal(one[1], three[1])


@pytest.mark.parametrize("shape", [(2, 21, 40), (3, 5, 7, 17), (2, 3, 64), (1, 4, 128), (2, 33, 16)])
def test_positions_agree_with_reference(level, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    c = shape[1]
    t = rng.integers(0, c, size=(shape[0],) + shape[2:])
    t.reshape(-1)[::3] = -100
    loss, grad = xentkit.cross_entropy(x, t, grad=True)
    want_loss, want_grad = ref.cross_entropy(x, t)
    _close(loss, want_loss)
    _close(grad, want_grad, atol=2e-6 * np.abs(want_grad).max())


@pytest.mark.parametrize("shape,axis", [((6, 40), 1), ((2, 19, 48), 1), ((3, 40, 5), 1)])
def test_caffe_layer_and_softmax_agree(level, shape, axis):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 5).astype(np.float32)
    c = shape[axis]
    labels = rng.integers(0, c, size=shape[:axis] + shape[axis + 1:]).astype(np.int32)
    labels.reshape(-1)[::4] = 255
    loss, diff, prob = xentkit.softmax_with_loss(x, labels, axis=axis, ignore_label=255, prob=True,
                                                 loss_weight=0.5)
    want_loss, want_diff, want_prob, _ = caffe_ref.softmax_ref(x, labels, axis=axis,
                                                               ignore_label=255, loss_weight=0.5)
    _close(loss, want_loss)
    _close(diff, want_diff, atol=2e-6 * np.abs(want_diff).max())
    _close(prob, want_prob, atol=1e-7)
    _close(xentkit.softmax(x, dim=axis), caffe_ref.softmax(x.astype(np.float64), axis), atol=1e-7)


@pytest.mark.parametrize("layout", ["rows", "positions", "positions150"])
def test_non_finite_rows_match_the_scalar_kernels(level, layout):
    """A NaN or infinite logit hands its position's group back to the scalar kernel: the
    results equal the scalar level's, and the other positions are unaffected. positions150:
    150 classes (tiles of 8 groups in the thread's buffer), bad positions inside a tile, in a
    tile's last group and in the tail."""
    rng = np.random.default_rng(11)
    if layout == "rows":
        x = rng.normal(size=(40, 37)).astype(np.float32)
        rows = [x[3], x[17], x[18], x[39], x[25]]
        t = rng.integers(0, 37, size=40)
    elif layout == "positions150":
        x = rng.normal(size=(2, 150, 300)).astype(np.float32)
        rows = [x[0, :, 5], x[1, :, 127], x[1, :, 299], x[0, :, 200], x[1, :, 130]]
        t = rng.integers(0, 150, size=(2, 300))
    else:
        x = rng.normal(size=(2, 9, 48)).astype(np.float32)
        rows = [x[0, :, 5], x[1, :, 20], x[1, :, 47], x[0, :, 33], x[1, :, 0]]
        t = rng.integers(0, 9, size=(2, 48))
    rows[0][2] = np.nan
    rows[1][0] = np.inf
    rows[2][4] = -np.inf
    rows[3][:] = -np.inf
    rows[4][1] = np.inf
    rows[4][6] = np.inf
    got = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    per_pos = xentkit.cross_entropy(x, t, reduction="none")
    before = xentkit.simd_level()
    xentkit.set_simd_level("scalar")
    try:
        want = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    finally:
        xentkit.set_simd_level(before)
    for a, b in zip(got, want):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        _close(a, b, rtol=1e-5, atol=1e-7)
    assert np.isnan(per_pos).any() and np.isfinite(per_pos).any()
    # The same holds for the finite rows against the float64 formula.
    finite = np.isfinite(x).all(axis=1) if layout == "positions" else np.isfinite(x).all(axis=1)
    if layout == "rows":
        want_per, _ = ref.cross_entropy(x[finite], t[finite], reduction="none")
        _close(per_pos[finite], want_per, atol=1e-7)


def test_label_far_below_the_max(level):
    x = np.zeros((3, 20), dtype=np.float32)
    x[:, 0] = 80.0
    x[0, 5] = -120.0  # e[label] underflows float32: the loss goes through double
    x[1, 5] = -40.0
    t = np.array([5, 5, 0])
    per = xentkit.cross_entropy(x, t, reduction="none")
    want, _ = ref.cross_entropy(x, t, reduction="none")
    _close(per[:2], want[:2], rtol=1e-6)
    assert per[2] == pytest.approx(19 * np.exp(-80.0), rel=1e-5)  # kept, not rounded to 0
    loss, _ = xentkit.softmax_with_loss(x[:1], t[:1])
    assert loss == pytest.approx(87.3365478515625, rel=1e-7)  # -log(FLT_MIN), Caffe's cap


def test_certain_rows_keep_their_precision(level):
    x = np.array([[0.0, -40.0, -40.0] + [-60.0] * 20], dtype=np.float32)
    loss, grad = xentkit.cross_entropy(x, np.array([0]), grad=True)
    want = 2 * np.exp(-40.0) + 20 * np.exp(-60.0)
    assert loss == pytest.approx(want, rel=1e-5)
    assert grad[0, 0] == pytest.approx(-want, rel=1e-5)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 16384 + 5, 50000])
def test_sigmoid_agrees_with_reference(level, n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=n) * 8).astype(np.float32)
    x[rng.integers(0, n, size=max(1, n // 50))] = rng.choice([60.0, -60.0, 100.0, -100.0])
    t = rng.uniform(size=n).astype(np.float32)
    loss, grad = xentkit.binary_cross_entropy_with_logits(x, t, reduction="sum", grad=True)
    per = caffe_ref.sigmoid_elementwise(x, t)
    _close(loss, per.sum(), rtol=2e-6)
    _close(grad, caffe_ref.stable_sigmoid(x) - t, atol=1e-6)
    caffe_loss, diff = xentkit.sigmoid_cross_entropy_loss(x.reshape(1, -1), t.reshape(1, -1))
    _close(caffe_loss, per.sum(), rtol=2e-6)
    _close(diff.reshape(-1), caffe_ref.stable_sigmoid(x) - t, atol=1e-6)


def test_sigmoid_long_sum_stays_within_1e_6(level):
    """BCE's element losses are summed in float partial sums of 8 vectors' lanes, each added to
    a double: over 2^23 elements (losses of very different sizes, the worst case for a float
    running sum) the float32 sum and mean stay within 1e-6 of the float64 ones."""
    rng = np.random.default_rng(23)
    n = 1 << 23
    x = (rng.normal(size=n) * 6).astype(np.float32)
    t = (rng.uniform(size=n) < 0.5).astype(np.float32)
    total = xentkit.binary_cross_entropy_with_logits(x, t, reduction="sum")
    mean = xentkit.binary_cross_entropy_with_logits(x, t)
    want = 0.0
    for s0 in range(0, n, 1 << 20):
        want += float(caffe_ref.sigmoid_elementwise(x[s0:s0 + (1 << 20)],
                                                    t[s0:s0 + (1 << 20)]).sum())
    assert abs(total - want) <= 1e-6 * want
    assert abs(mean - want / n) <= 1e-6 * want / n


def test_sigmoid_non_finite_logits(level):
    rng = np.random.default_rng(5)
    x = rng.normal(size=100).astype(np.float32)
    t = rng.uniform(size=100).astype(np.float32)
    x[[3, 40, 41, 99]] = [np.inf, -np.inf, np.nan, np.inf]
    t[[3, 40]] = [1.0, 0.0]  # limits 0
    per = xentkit.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert per[3] == 0.0 and per[40] == 0.0 and np.isnan(per[41]) and per[99] == np.inf
    others = np.isfinite(x)
    _close(per[others], caffe_ref.sigmoid_elementwise(x[others], t[others]), rtol=2e-6)


def test_levels_agree_and_threads_do_not_matter(restore_threads):
    rng = np.random.default_rng(21)
    x = (rng.normal(size=(600, 1000)) * 4).astype(np.float32)
    t = rng.integers(0, 1000, size=600)
    xs = rng.normal(size=(600, 1000)).astype(np.float32)
    ts = rng.uniform(size=xs.shape).astype(np.float32)
    before = xentkit.simd_level()
    results = {}
    try:
        for name in LEVELS:
            xentkit.set_simd_level(name)
            runs = []
            for threads in (1, 2, 3):
                xentkit.set_num_threads(threads)
                loss, grad = xentkit.cross_entropy(x, t, grad=True)
                sl, sg = xentkit.binary_cross_entropy_with_logits(xs, ts, grad=True)
                runs.append((loss, grad.tobytes(), sl, sg.tobytes()))
            assert all(r == runs[0] for r in runs[1:]), name
            results[name] = (loss, grad, sl, sg)
    finally:
        xentkit.set_simd_level(before)
    base = results["scalar"]
    for name, (loss, grad, sl, sg) in results.items():
        assert loss == pytest.approx(base[0], rel=1e-6), name
        _close(grad, base[1], atol=1e-9)
        assert sl == pytest.approx(base[2], rel=1e-6), name
        _close(sg, base[3], atol=1e-9)


# ---- the short path of cross_entropy ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 10), (4, 3), (64, 1000), (5, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_short_path_is_the_general_path(dtype, shape, reduction):
    rng = np.random.default_rng(shape[0] * shape[1])
    x = rng.normal(size=shape).astype(dtype)
    t = rng.integers(0, shape[1], size=shape[0])
    t[::3] = -100
    fast = xentkit.cross_entropy(x, t, reduction=reduction)
    fast_l, fast_g = xentkit.cross_entropy(x, t, reduction=reduction, grad=True)
    # An int label_smoothing takes the general path.
    slow = xentkit.cross_entropy(x, t, reduction=reduction, label_smoothing=0)
    slow_l, slow_g = xentkit.cross_entropy(x, t, reduction=reduction, label_smoothing=0, grad=True)
    assert type(fast) is float and (fast == slow or (np.isnan(fast) and np.isnan(slow)))
    assert fast_l == fast or (np.isnan(fast_l) and np.isnan(fast))
    assert fast_g.dtype == x.dtype and fast_g.shape == x.shape
    assert fast_g.tobytes() == slow_g.tobytes() and (fast_l == slow_l or np.isnan(slow_l))
    want, _ = ref.cross_entropy(x, t, reduction=reduction)
    _close(fast, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_short_path_errors_and_unusual_arrays():
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    with pytest.raises(xentkit.LabelError) as fast_err:
        xentkit.cross_entropy(x, np.array([0, 5, 1]))
    with pytest.raises(xentkit.LabelError) as slow_err:
        xentkit.cross_entropy(x, np.array([0, 5, 1]), label_smoothing=0)
    assert str(fast_err.value) == str(slow_err.value)
    with pytest.raises(ValueError):
        xentkit.cross_entropy(x, np.array([0, 1]))
    t = np.array([0, 4, 2])
    want = xentkit.cross_entropy(x, t, label_smoothing=0)
    # Views, other dtypes, read-only and big-endian arrays all give the same number.
    wide = np.zeros((3, 10), dtype=np.float32)
    wide[:, ::2] = x
    assert xentkit.cross_entropy(wide[:, ::2], t) == want
    assert xentkit.cross_entropy(x, t.astype(np.int32)) == want
    ro = x.copy()
    ro.flags.writeable = False
    assert xentkit.cross_entropy(ro, t) == want
    assert xentkit.cross_entropy(x.astype(">f4"), t) == want
    assert np.array_equal(t, [0, 4, 2]) and x.flags.writeable


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_short_path_with_a_gradient_array(dtype, reduction):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(37, 9)).astype(dtype)
    t = rng.integers(0, 9, size=37)
    t[::5] = -100
    want_l, want_g = ref.cross_entropy(x, t, reduction=reduction)
    slow_l, slow_g = xentkit.cross_entropy(x, t, reduction=reduction, label_smoothing=0,
                                           grad=True)
    out = np.full_like(x, np.nan)
    loss, g = xentkit.cross_entropy(x, t, reduction=reduction, grad=out)
    assert g is out and type(loss) is float and loss == slow_l
    assert out.tobytes() == slow_g.tobytes()
    _close(loss, want_l, rtol=1e-5 if dtype == np.float32 else 1e-12)
    _close(out, want_g, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-9)
    # In place: the input itself.
    xi = x.copy()
    loss_i, g_i = xentkit.cross_entropy(xi, t, reduction=reduction, grad=xi)
    assert g_i is xi and loss_i == loss and xi.tobytes() == slow_g.tobytes()


def test_short_path_gradient_array_errors_match_the_general_path():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    t = rng.integers(0, 4, size=6)
    big = np.zeros((6, 8), np.float32)
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    cases = [
        np.zeros((6, 5), np.float32),                  # shape
        np.zeros((6, 4), np.float64),                  # dtype
        np.zeros((4, 6), np.float32).T,                # not C-contiguous
        big[:, ::2],                                   # a strided view
        ro,                                            # read-only
        np.zeros((6, 4), ">f4"),                       # big-endian
        np.zeros((24,), np.float32),                   # flat
    ]
    for bad in cases:
        with pytest.raises(ValueError) as fast_err:
            xentkit.cross_entropy(x, t, grad=bad)
        with pytest.raises(ValueError) as slow_err:
            xentkit.cross_entropy(x, t, grad=bad, label_smoothing=0)
        assert str(fast_err.value) == str(slow_err.value)
    # Overlapping the input (but not the input itself), or the target's bytes.
    buf = np.zeros((7, 4), np.float32)
    buf[:6] = x
    for xx, gg in [(buf[:6], buf[1:]), (buf[1:], buf[:6])]:
        with pytest.raises(ValueError, match="overlap"):
            xentkit.cross_entropy(xx, t, grad=gg)
    # The target's bytes: the labels tt[:6] and, apart from them, tt[6:] seen as float32.
    x2 = rng.normal(size=(6, 2)).astype(np.float32)
    tt = np.zeros(12, np.int64)
    tt[:6] = rng.integers(0, 2, size=6)
    with pytest.raises(ValueError, match="overlap"):
        xentkit.cross_entropy(x2, tt[:6], grad=tt.view(np.float32)[:12].reshape(6, 2))
    with pytest.raises(ValueError, match="overlap"):
        xentkit.cross_entropy(x2, tt[:6], grad=tt.view(np.float32)[10:22].reshape(6, 2))
    apart = tt.view(np.float32)[12:24].reshape(6, 2)
    loss, g = xentkit.cross_entropy(x2, tt[:6], grad=apart)
    slow_l, slow_g = xentkit.cross_entropy(x2, tt[:6].copy(), grad=True, label_smoothing=0)
    assert g is apart and loss == slow_l and apart.tobytes() == slow_g.tobytes()
    # A bad label still names itself, and nothing is written to the given array.
    out = np.full_like(x, 7.0)
    with pytest.raises(xentkit.LabelError):
        xentkit.cross_entropy(x, np.array([0, 1, 2, 3, 4, 0]), grad=out)
    assert np.all(out == 7.0)


# ---- accuracy of a long float32 sum -----------------------------------------------------------

@pytest.mark.slow
def test_float32_loss_over_1e8_elements():
    rng = np.random.default_rng(8)
    n, c = 100_000, 1000
    x = np.empty((n, c), dtype=np.float32)
    for s in range(0, n, 10_000):
        x[s:s + 10_000] = rng.normal(size=(10_000, c)) * 2
    t = rng.integers(0, c, size=n)
    total = xentkit.cross_entropy(x, t, reduction="sum")
    want = 0.0
    for s in range(0, n, 5_000):
        xs = x[s:s + 5_000].astype(np.float64)
        m = xs.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(xs - m).sum(axis=1))
        want += float(np.sum(lse - xs[np.arange(len(xs)), t[s:s + 5_000]]))
    assert abs(total - want) <= 1e-6 * abs(want)


def _child_call(x, t, want, queue):
    loss, grad = xentkit.cross_entropy(x, t, grad=True)
    queue.put(bool(loss == want[0] and grad.tobytes() == want[1]))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_uses_a_fresh_pool(restore_threads):
    import multiprocessing as mp

    xentkit.set_num_threads(2)
    rng = np.random.default_rng(31)
    x = rng.normal(size=(1024, 1000)).astype(np.float32)  # past the parallel threshold
    t = rng.integers(0, 1000, size=1024)
    loss, grad = xentkit.cross_entropy(x, t, grad=True)  # the parent's workers now exist
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_call, args=(x, t, (loss, grad.tobytes()), queue))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung on the parent's pool"
    assert child.exitcode == 0 and queue.get(timeout=5) is True


def test_reduced_loss_rounds_to_its_dtype_quietly():
    """A reduced loss is a Python float rounded to the result dtype: past float16's or float32's
    range it becomes inf (as a cast does), without an overflow warning; within range the value
    equals NumPy's own rounding; float64 results are not rounded."""
    import warnings

    x16 = np.full((64, 2), [0.0, 60000.0], np.float16)  # each row's loss ~60000
    x32 = x16.astype(np.float32)
    t = np.zeros(64, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xentkit.cross_entropy(x16, t, reduction="sum") == np.inf
        assert xentkit.cross_entropy(x16, t) == pytest.approx(60000.0, rel=1e-3)
        total32 = xentkit.cross_entropy(x32, t, reduction="sum")
        assert total32 == float(np.float32(total32)) and total32 == pytest.approx(64 * 60000.0)
        big = np.array([[0.0, 3e38], [0.0, 3e38]], np.float32)
        assert xentkit.cross_entropy(big, np.zeros(2, np.int64), reduction="sum") == np.inf
        x64 = x32.astype(np.float64) + 1e-9
        total64 = xentkit.cross_entropy(x64, t, reduction="sum")
        assert total64 == pytest.approx(64 * (60000.0 + 1e-9), rel=1e-12)


@pytest.mark.parametrize("channels", [2, 40])
def test_softmax_of_two_live_classes_is_within_a_few_roundings(level, channels):
    """The vector exp (a table of 2^(j/K) and its rounding, then a degree-4 polynomial on AVX2
    and AVX-512; a degree-6 polynomial on the baseline build) is within about half an ulp: the
    softmax of rows (0, z, -200, ...) for 2^18 random z in [-87.33, 0], tiny z and the edges
    of float's range stays within 3.5 * 2^-24 relative of float64 (the exp, 1 / sum and the
    product each rounded once), and exp(0) gives exactly 1 / sum."""
    rng = np.random.default_rng(5)
    z = np.concatenate([-rng.random(1 << 18) * 87.33, -rng.random(1 << 12) * 1e-3,
                        [0.0, -1e-7, -87.336, -87.3365]]).astype(np.float32)
    x = np.full((len(z), channels), -200.0, np.float32)
    x[:, 0] = 0.0
    x[:, 1] = z
    p = xentkit.softmax(x, dim=1)
    e = np.exp(z.astype(np.float64))
    rest = (channels - 2) * np.exp(-200.0)
    want = e / (1.0 + e + rest)
    rel = np.abs(p[:, 1] - want) / want
    assert rel.max() <= 3.5 * 2.0**-24, (rel.max() / 2.0**-24, z[rel.argmax()])
    assert p[-4, 1] == p[-4, 0]  # z = 0: both e are exactly 1


class _Sub(np.ndarray):
    """An ndarray subclass: never taken by the short paths (they want exact ndarrays)."""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37, 9), (5,), (2, 3, 4), (300, 301)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_short_path_is_the_general_path(dtype, shape, reduction):
    """binary_cross_entropy_with_logits' short path (plain ndarrays, no weights) gives the
    general path's bits: the loss, a new gradient, a given gradient array and in place."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 4).astype(dtype)
    t = rng.random(size=shape).astype(dtype)
    slow = xentkit.binary_cross_entropy_with_logits(x.view(_Sub), t, reduction=reduction)
    slow_l, slow_g = xentkit.binary_cross_entropy_with_logits(x.view(_Sub), t,
                                                              reduction=reduction, grad=True)
    fast = xentkit.binary_cross_entropy_with_logits(x, t, reduction=reduction)
    fast_l, fast_g = xentkit.binary_cross_entropy_with_logits(x, t, reduction=reduction,
                                                              grad=True)
    assert type(fast) is float and fast == slow and fast_l == slow_l
    assert type(fast_g) is np.ndarray and fast_g.dtype == x.dtype and fast_g.shape == x.shape
    assert fast_g.tobytes() == np.asarray(slow_g).tobytes()
    out = np.full_like(x, np.nan)
    loss_o, g_o = xentkit.binary_cross_entropy_with_logits(x, t, reduction=reduction, grad=out)
    assert g_o is out and loss_o == slow_l and out.tobytes() == fast_g.tobytes()
    xi = x.copy()
    loss_i, g_i = xentkit.binary_cross_entropy_with_logits(xi, t, reduction=reduction, grad=xi)
    assert g_i is xi and loss_i == slow_l and xi.tobytes() == fast_g.tobytes()
    want_l, want_g = rb.bce_logits_ref(x, t, reduction=reduction)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    _close(fast, want_l, rtol=tol)
    _close(fast_g, want_g, rtol=tol * 4, atol=tol * np.abs(want_g).max())


def test_bce_short_path_errors_match_the_general_path():
    """Anything the short path does not take (bad gradient arrays, other shapes or dtypes,
    views, read-only or big-endian arrays) goes to the general path: the same numbers, and the
    general path's error for what is wrong, with the gradient array left untouched."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    t = rng.random(size=(6, 5)).astype(np.float32)
    want = xentkit.binary_cross_entropy_with_logits(x.view(_Sub), t)
    bad_grads = [np.zeros((6, 4), np.float32), np.zeros((6, 5), np.float64),
                 np.zeros((5, 6), np.float32), np.zeros((6, 10), np.float32)[:, ::2]]
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    bad_grads.append(ro)
    for g in bad_grads:
        with pytest.raises((ValueError, TypeError)) as fast_err:
            xentkit.binary_cross_entropy_with_logits(x, t, grad=g)
        with pytest.raises((ValueError, TypeError)) as slow_err:
            xentkit.binary_cross_entropy_with_logits(x.view(_Sub), t, grad=g)
        assert type(fast_err.value) is type(slow_err.value)
        assert str(fast_err.value) == str(slow_err.value)
        assert not np.any(np.asarray(g))
    # A gradient array that is the target (overlapping it) is refused like the general path.
    tt = t.copy()
    with pytest.raises(ValueError) as fast_err:
        xentkit.binary_cross_entropy_with_logits(x, tt, grad=tt)
    with pytest.raises(ValueError) as slow_err:
        xentkit.binary_cross_entropy_with_logits(x.view(_Sub), tt, grad=tt)
    assert str(fast_err.value) == str(slow_err.value) and np.array_equal(tt, t)
    with pytest.raises(ValueError, match="target"):
        xentkit.binary_cross_entropy_with_logits(x, t[:, :4])
    with pytest.raises(TypeError):
        xentkit.binary_cross_entropy_with_logits(x, np.ones((6, 5), np.int64))
    # Views, mixed dtypes, big-endian and read-only arrays: the same number.
    wide = np.zeros((6, 10), np.float32)
    wide[:, ::2] = x
    assert xentkit.binary_cross_entropy_with_logits(wide[:, ::2], t) == want
    assert xentkit.binary_cross_entropy_with_logits(x.astype(">f4"), t) == want
    rx = x.copy()
    rx.flags.writeable = False
    assert xentkit.binary_cross_entropy_with_logits(rx, t) == want
    mixed = xentkit.binary_cross_entropy_with_logits(x, t.astype(np.float64))
    assert mixed == xentkit.binary_cross_entropy_with_logits(x.view(_Sub), t.astype(np.float64))
    empty = np.zeros((0, 5), np.float32)
    assert np.isnan(xentkit.binary_cross_entropy_with_logits(empty, empty))
