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
