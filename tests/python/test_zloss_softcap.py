"""z-loss of xentkit.cross_entropy against torch float64 (autograd for the gradient) and a float64
NumPy reference written from the formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentkit


def _torch_reference(x, t, w, ignore, red, eps, z):
    """Loss and gradient in float64: F.cross_entropy plus z * w[y] * logsumexp^2, same divisor."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    tt = torch.tensor(t)
    wt = None if w is None else torch.tensor(np.asarray(w, np.float64))
    ce = F.cross_entropy(xt, tt, weight=wt, ignore_index=ignore, reduction="none",
                         label_smoothing=eps)
    lse = torch.logsumexp(xt, dim=1)
    keep = tt != ignore
    wy = torch.ones_like(lse) if wt is None else wt[torch.where(keep, tt, 0)]
    wy = torch.where(keep, wy, torch.zeros_like(wy))
    per = ce + z * wy * lse ** 2
    if red == "none":
        out = per
    elif red == "sum":
        out = per.sum()
    else:
        out = per.sum() / wy.sum()
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


def _numpy_reference(x, t, w, ignore, red, z):
    """float64 NumPy from the formulas (no smoothing): w[y] (lse - x[y] + z lse^2)."""
    x = np.asarray(x, np.float64)
    if x.ndim > 2:  # (N, C, d) -> (N*d, C)
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        t = t.reshape(-1)
    n, c = x.shape
    w = np.ones(c) if w is None else np.asarray(w, np.float64)
    keep = t != ignore
    ty = np.where(keep, t, 0)
    wy = np.where(keep, w[ty], 0.0)
    m = x.max(1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(1))
    per = wy * (lse - x[np.arange(n), ty] + z * lse * lse)
    if red == "none":
        return per
    return per.sum() if red == "sum" else per.sum() / wy.sum()


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_against_torch_float64(red, weighted, eps, level):
    rng = np.random.default_rng()
    n, c, ignore = 37, 11, 3
    x = rng.normal(scale=3.0, size=(n, c)) + 2.0
    t = rng.integers(0, c, size=n)
    t[rng.random(n) < 0.2] = ignore
    w = rng.uniform(0.2, 2.0, size=c) if weighted else None
    z = float(rng.uniform(1e-3, 0.3))
    ref, ref_g = _torch_reference(x, t, w, ignore, red, eps, z)
    loss, g = xentkit.cross_entropy(x, t, w, ignore_index=ignore, reduction=red,
                                    label_smoothing=eps, z_loss=z, grad=True)
    np.testing.assert_allclose(loss, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-12)
    if eps == 0.0:
        np.testing.assert_allclose(loss, _numpy_reference(x, t, w, ignore, red, z), rtol=1e-10)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
def test_float32_and_float16(red, level):
    rng = np.random.default_rng()
    n, c = 64, 300
    x = rng.normal(size=(n, c))
    t = rng.integers(0, c, size=n)
    z = float(rng.uniform(0.01, 0.1))
    ref, ref_g = _torch_reference(x, t, None, -100, red, 0.0, z)
    for dt, tol in ((np.float32, 1e-5), (np.float16, 3e-3)):
        xd = x.astype(dt)
        ref, ref_g = _torch_reference(xd.astype(np.float64), t, None, -100, red, 0.0, z)
        loss, g = xentkit.cross_entropy(xd, t, reduction=red, z_loss=z, grad=True)
        assert g.dtype == dt
        np.testing.assert_allclose(np.asarray(loss, np.float64), ref, rtol=tol, atol=tol)
        scale = np.abs(ref_g).max()
        np.testing.assert_allclose(g.astype(np.float64), ref_g, rtol=0, atol=tol * scale)


def test_class_axis_not_last():
    rng = np.random.default_rng()
    x = rng.normal(size=(4, 7, 5))
    t = rng.integers(0, 7, size=(4, 5))
    t[0, 1] = -100
    z = 0.05
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t)
    lse = torch.logsumexp(xt, dim=1)
    keep = (tt != -100).double()
    ref = (F.cross_entropy(xt, tt, reduction="sum") + z * (keep * lse ** 2).sum()) / keep.sum()
    ref.backward()
    loss, g = xentkit.cross_entropy(x, t, z_loss=z, grad=True)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-10)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(
        xentkit.cross_entropy(x, t, z_loss=z, reduction="none"),
        _numpy_reference(x, t, None, -100, "none", z).reshape(4, 5), rtol=1e-10)


def test_bit_identical_across_thread_counts(restore_threads):
    rng = np.random.default_rng()
    x = rng.normal(size=(3000, 257)).astype(np.float32)
    t = rng.integers(0, 257, size=3000)
    out = []
    for k in (1, 2, 3):
        xentkit.set_num_threads(k)
        out.append(xentkit.cross_entropy(x, t, z_loss=1e-2, label_smoothing=0.1, grad=True))
    for loss, g in out[1:]:
        assert loss == out[0][0]
        assert np.array_equal(g, out[0][1])


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf")])
def test_bad_z_loss(bad):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"z_loss: expected a finite value >= 0, got"):
        xentkit.cross_entropy(x, np.array([0, 1]), z_loss=bad)


def test_z_loss_with_probabilities():
    x = np.zeros((2, 3))
    q = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"z_loss: expected 0.0 with class probabilities"):
        xentkit.cross_entropy(x, q, z_loss=0.1)
    xentkit.cross_entropy(x, q, z_loss=0.0)  # 0 stays allowed


# --- softcap ------------------------------------------------------------------------------------

def _capped_reference(x, t, w, ignore, red, eps, z, s):
    """float64 torch: x -> s tanh(x / s) (s None: unchanged), then F.cross_entropy plus
    z * w[y] * logsumexp^2 under the same divisor; the gradient by autograd through the tanh.
    Any layout with the class axis 1."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    xc = xt if s is None else s * torch.tanh(xt / s)
    tt = torch.tensor(t)
    wt = None if w is None else torch.tensor(np.asarray(w, np.float64))
    ce = F.cross_entropy(xc, tt, weight=wt, ignore_index=ignore, reduction="none",
                         label_smoothing=eps)
    lse = torch.logsumexp(xc, dim=1)
    keep = tt != ignore
    wy = torch.ones_like(lse) if wt is None else wt[torch.where(keep, tt, 0)]
    wy = torch.where(keep, wy, torch.zeros_like(wy))
    per = ce + torch.where(keep, z * wy * lse ** 2, torch.zeros_like(lse))
    if red == "none":
        out = per
    elif red == "sum":
        out = per.sum()
    else:
        out = per.sum() / wy.sum()
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


def _numpy_capped(x, t, ignore, s, z):
    """Per-position losses in float64 NumPy from the formulas, (N, C) rows, no weights."""
    xc = s * np.tanh(np.asarray(x, np.float64) / s)
    m = xc.max(1)
    lse = m + np.log(np.exp(xc - m[:, None]).sum(1))
    keep = t != ignore
    ty = np.where(keep, t, 0)
    return np.where(keep, lse - xc[np.arange(len(t)), ty] + z * lse * lse, 0.0)


TOL = {np.float64: (1e-10, 1e-12), np.float32: (2e-5, 2e-6), np.float16: (5e-3, 3e-3)}


def _dtypes():
    out = [np.float64, np.float32, np.float16]
    try:
        import ml_dtypes
        out.append(ml_dtypes.bfloat16)
    except ImportError:  # pragma: no cover
        pass
    return out


def _tol(dt):
    return TOL.get(dt, (3e-2, 2e-2))  # bfloat16


def _check(x, t, w, ignore, red, eps, z, s, dt, grad_input=False):
    xd = x.astype(dt)
    ref, ref_g = _capped_reference(xd.astype(np.float64), t, w, ignore, red, eps, z, s)
    if grad_input:
        buf = xd.copy()
        loss, g = xentkit.cross_entropy(buf, t, w, ignore_index=ignore, reduction=red,
                                        label_smoothing=eps, z_loss=z, softcap=s, grad=buf)
        assert g is buf
    else:
        loss, g = xentkit.cross_entropy(xd, t, w, ignore_index=ignore, reduction=red,
                                        label_smoothing=eps, z_loss=z, softcap=s, grad=True)
    assert g.dtype == np.dtype(dt) and g.shape == x.shape
    rtol, atol = _tol(dt)
    scale = max(np.abs(ref).max(initial=0.0), 1.0)
    np.testing.assert_allclose(np.asarray(loss, np.float64), ref, rtol=rtol, atol=atol * scale)
    # every gradient element carries the rounding of p - onehot, whose scale is 1 per position
    # (1/t.size at most for "mean"), even where the z and cap terms leave only a small gradient
    # (one class: p - 1 = 0 and the gradient is z's term alone)
    gscale = max(np.abs(ref_g).max(initial=0.0), 1.0 / max(np.size(t), 1))
    np.testing.assert_allclose(g.astype(np.float64), ref_g, rtol=0, atol=atol * gscale)


@pytest.mark.parametrize("dt", _dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [dict(s=5.0, z=0.0), dict(s=None, z=1e-2), dict(s=3.0, z=5e-2)],
                         ids=["softcap", "z_loss", "both"])
def test_softcap_z_loss_rows(dt, red, opts, level):
    rng = np.random.default_rng()
    for c in list(range(1, 34)) + [100, 1000]:
        n = int(rng.integers(1, 40))
        x = rng.normal(scale=4.0, size=(n, c))
        t = rng.integers(0, c, size=n)
        t[rng.random(n) < 0.2] = -100
        _check(x, t, None, -100, red, 0.0, opts["z"], opts["s"], dt)


@pytest.mark.parametrize("dt", _dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("opts", [dict(s=5.0, z=0.0), dict(s=None, z=1e-2), dict(s=3.0, z=5e-2)],
                         ids=["softcap", "z_loss", "both"])
def test_softcap_z_loss_32000_classes(dt, opts):
    rng = np.random.default_rng()
    x = rng.normal(scale=3.0, size=(3, 32000))
    t = rng.integers(0, 32000, size=3)
    _check(x, t, None, -100, "mean", 0.0, opts["z"], opts["s"], dt)


@pytest.mark.parametrize("dt", _dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("inner", [1, 7, 4096])
@pytest.mark.parametrize("opts", [dict(s=5.0, z=0.0), dict(s=None, z=1e-2), dict(s=3.0, z=5e-2)],
                         ids=["softcap", "z_loss", "both"])
def test_softcap_z_loss_spatial(dt, inner, opts, level):
    rng = np.random.default_rng()
    for c in (3, 17, 40) if inner == 4096 else (1, 5, 16, 33, 300):
        x = rng.normal(scale=4.0, size=(2, c, inner))
        if inner == 7:
            x = x.reshape(2, c, 7, 1)
        t = rng.integers(0, c, size=(2,) + x.shape[2:])
        t[rng.random(t.shape) < 0.2] = -100
        _check(x, t, None, -100, "mean", 0.0, opts["z"], opts["s"], dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("z", [0.0, 2e-2])
def test_softcap_with_weights_ignore_smoothing(dt, red, eps, z):
    rng = np.random.default_rng()
    for c in (4, 19, 257):
        n = 29
        x = rng.normal(scale=6.0, size=(n, c))
        t = rng.integers(0, c, size=n)
        ignore = int(rng.integers(0, c))  # a real class may be the ignored one
        t[rng.random(n) < 0.2] = ignore
        w = rng.uniform(0.2, 2.0, size=c)
        _check(x, t, w, ignore, red, eps, z, float(rng.uniform(1.0, 10.0)), dt)


@pytest.mark.parametrize("dt", _dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(23, 9), (19, 70), (2, 33, 7), (2, 20, 64)])
def test_softcap_in_place_gradient(dt, shape, level):
    rng = np.random.default_rng()
    x = rng.normal(scale=5.0, size=shape)
    t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    for z, s in ((0.0, 4.0), (1e-2, 4.0), (1e-2, None)):
        _check(x, t, None, -100, "mean", 0.0, z, s, dt, grad_input=True)


def test_softcap_numpy_formula_and_large_logits():
    rng = np.random.default_rng()
    for c in (7, 16, 50, 1000):
        x = rng.uniform(-1e4, 1e4, size=(25, c))  # tanh saturates: capped logits are +-s
        t = rng.integers(0, c, size=25)
        s, z = 20.0, 1e-3
        want = _numpy_capped(x, t, -100, s, z)
        for dt in (np.float64, np.float32):
            got = xentkit.cross_entropy(x.astype(dt), t, reduction="none", softcap=s, z_loss=z)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            ref, ref_g = _capped_reference(x.astype(dt).astype(np.float64), t, None, -100,
                                           "sum", 0.0, z, s)
            loss, g = xentkit.cross_entropy(x.astype(dt), t, reduction="sum", softcap=s,
                                            z_loss=z, grad=True)
            assert np.isfinite(loss) and np.isfinite(g).all()
            np.testing.assert_allclose(loss, ref, rtol=1e-5)
            # Where tanh saturates, 1 - t^2 of a float32 t keeps only an absolute precision
            # (about 1.2e-7 times the gradient before the cap).
            np.testing.assert_allclose(g, ref_g, rtol=0, atol=1e-12 if dt == np.float64 else 3e-7)


@pytest.mark.parametrize("dt", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [5, 16, 40])
def test_softcap_non_finite_logits(dt, c, level):
    rng = np.random.default_rng()
    n = 40
    x = rng.normal(scale=3.0, size=(n, c))
    x[3, 1] = np.inf
    x[4, 0] = -np.inf
    x[5, 2] = np.inf
    x[5, 3] = -np.inf
    x[7, 1] = np.nan
    x[9, :] = np.inf
    t = rng.integers(0, c, size=n)
    for z in (0.0, 1e-2):
        ref, ref_g = _capped_reference(x.astype(dt).astype(np.float64), t, None, -100, "none",
                                       0.0, z, 4.0)
        loss, g = xentkit.cross_entropy(x.astype(dt), t, reduction="none", z_loss=z,
                                        softcap=4.0, grad=True)
        np.testing.assert_allclose(loss, ref, rtol=2e-5, atol=2e-6, equal_nan=True)
        np.testing.assert_allclose(g, ref_g, rtol=2e-5, atol=2e-6, equal_nan=True)


def test_softcap_finite_differences():
    rng = np.random.default_rng()
    x = rng.normal(scale=4.0, size=(6, 9))
    t = rng.integers(0, 9, size=6)
    t[2] = -100
    w = rng.uniform(0.5, 1.5, size=9)
    kw = dict(weight=w, softcap=3.0, z_loss=0.05, label_smoothing=0.1)
    _, g = xentkit.cross_entropy(x, t, grad=True, **kw)
    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (xentkit.cross_entropy(xp, t, **kw) - xentkit.cross_entropy(xm, t, **kw)) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_softcap_simd_equals_scalar_within_rounding():
    """float32 on the vectorised kernels against the scalar ones (set_simd_level)."""
    rng = np.random.default_rng()
    before = xentkit.simd_level()
    try:
        for shape in ((50, 9), (40, 300), (3, 17, 70)):
            x = rng.normal(scale=5.0, size=shape).astype(np.float32)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            out = []
            for lvl in ("scalar", "auto"):
                xentkit.set_simd_level(lvl)
                out.append(xentkit.cross_entropy(x, t, softcap=7.0, z_loss=1e-2, grad=True))
            np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
            np.testing.assert_allclose(out[1][1], out[0][1], rtol=0,
                                       atol=2e-6 * np.abs(out[0][1]).max())
    finally:
        xentkit.set_simd_level(before)


def test_softcap_bit_identical_across_thread_counts(restore_threads):
    rng = np.random.default_rng()
    for shape in ((3000, 257), (4, 30, 700)):
        x = rng.normal(size=shape).astype(np.float32)
        t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
        out = []
        for k in (1, 2, 3):
            xentkit.set_num_threads(k)
            out.append(xentkit.cross_entropy(x, t, z_loss=1e-2, softcap=5.0, grad=True))
        for loss, g in out[1:]:
            assert loss == out[0][0]
            assert np.array_equal(g, out[0][1])


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_softcap(bad):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"softcap: expected None or a finite value > 0, got"):
        xentkit.cross_entropy(x, np.array([0, 1]), softcap=bad)


def test_softcap_with_probabilities_is_refused():
    x = np.zeros((2, 3))
    q = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"softcap: expected None with class probabilities"):
        xentkit.cross_entropy(x, q, softcap=5.0)
    xentkit.cross_entropy(x, q, softcap=None)


class _FakeDevice:
    """A CUDA array interface object with nothing behind it."""

    def __init__(self, shape, typestr):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (0x10000, False), "strides": None,
                                         "version": 3, "stream": None}


@pytest.mark.parametrize("kw,match", [(dict(softcap=0.0), "softcap: expected None or a finite"),
                                      (dict(z_loss=-1.0), "z_loss: expected a finite value >= 0")],
                         ids=["softcap", "z_loss"])
def test_device_arrays_check_softcap_and_z_loss_first(kw, match):
    """Bad values are refused before any device work, as on the host."""
    with pytest.raises(ValueError, match=match):
        xentkit.cross_entropy(_FakeDevice((2, 3), "<f4"), _FakeDevice((2,), "<i8"), **kw)


@pytest.mark.parametrize("kw", [dict(softcap=5.0), dict(z_loss=0.1)], ids=["softcap", "z_loss"])
def test_device_arrays_take_softcap_and_z_loss(kw):
    """The CUDA kernel has both options: valid values go on to the device dispatch, which here
    finds no device (the CUDA results themselves are checked in test_cuda_gpu.py)."""
    if xentkit.cuda_available():
        pytest.skip("a real device is present: test_cuda_gpu.py covers it")
    # a CUDA build finds no device here; a CPU-only build says it has no CUDA kernels
    with pytest.raises(xentkit.CudaUnavailableError, match="no usable CUDA device|no CUDA kernels"):
        xentkit.cross_entropy(_FakeDevice((2, 3), "<f4"), _FakeDevice((2,), "<i8"), **kw)
