"""The fused linear cross-entropy (xentkit.linear_cross_entropy and xentkit.torch's) against
torch float64 (F.linear + F.cross_entropy, z-loss and softcap written out with torch ops), on fresh
random inputs: every option, reduction, bias or none, chunk sizes that do not divide N, 3-D
inputs, ignored chunks, scoring, memory in a fresh process, and bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentkit
import xentkit.torch as xt
from xentkit import _linear


def _reference(x, w, t, b=None, cw=None, ignore=-100, red="mean", eps=0.0, z=0.0, cap=None,
               upstream=None):
    """Loss and the gradients of sum(upstream * loss) for input, W and b, in float64 torch."""
    xt_ = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    wt = torch.tensor(np.asarray(w, np.float64), requires_grad=True)
    bt = None if b is None else torch.tensor(np.asarray(b, np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(t, np.int64)).reshape(-1)
    cwt = None if cw is None else torch.tensor(np.asarray(cw, np.float64))
    logits = F.linear(xt_, wt, bt).reshape(-1, wt.shape[0])
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    per = F.cross_entropy(logits, tt, weight=cwt, ignore_index=ignore, reduction="none",
                          label_smoothing=eps)
    keep = tt != ignore
    wy = torch.ones(tt.shape, dtype=torch.float64) if cwt is None else cwt[torch.where(keep, tt, 0)]
    wy = torch.where(keep, wy, torch.zeros_like(wy))
    per = per + z * wy * torch.logsumexp(logits, dim=1) ** 2
    if red == "none":
        out = per.reshape(np.shape(t))
    elif red == "sum":
        out = per.sum()
    else:
        out = per.sum() / wy.sum()
    g = torch.ones_like(out) if upstream is None else torch.tensor(np.asarray(upstream, np.float64))
    params = [xt_, wt] + ([bt] if bt is not None else [])
    grads = torch.autograd.grad(out, params, g)
    gb = grads[2].numpy() if bt is not None else None
    return out.detach().numpy(), grads[0].numpy(), grads[1].numpy(), gb


def _problem(rng, shape, d, v, dtype=np.float64, ignore_share=0.2, ignore=-100):
    x = rng.standard_normal(shape + (d,)).astype(dtype)
    w = (rng.standard_normal((v, d)) / np.sqrt(d)).astype(dtype) * 2
    b = rng.standard_normal(v).astype(dtype)
    t = rng.integers(0, v, shape)
    t[rng.random(shape) < ignore_share] = ignore
    return x, w, b, t


def _ids(options):
    return "-".join(f"{k}{v}" for k, v in options.items()) or "plain"


def _close(actual, expected, rtol):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("options", [
    {}, {"eps": 0.1}, {"z": 1e-2}, {"weights": True}, {"eps": 0.2, "z": 1e-3, "weights": True},
    {"cap": 3.0}, {"cap": 2.0, "z": 1e-2, "eps": 0.05, "weights": True}], ids=_ids)
def test_numpy_matches_torch_float64(red, bias, options):
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (37,), 12, 45)
    cw = rng.random(45) + 0.5 if options.get("weights") else None
    kw = dict(reduction=red, label_smoothing=options.get("eps", 0.0), z_loss=options.get("z", 0.0),
              softcap=options.get("cap"))
    loss, gx, gw, gb = xentkit.linear_cross_entropy(
        x, w, t, linear_bias=b if bias else None, weight=cw, chunk_size=8, grad=True, **kw)
    ref = _reference(x, w, t, b if bias else None, cw, red=red, eps=kw["label_smoothing"],
                     z=kw["z_loss"], cap=kw["softcap"])
    _close(loss, ref[0], 1e-12)
    _close(gx, ref[1], 1e-12)
    _close(gw, ref[2], 1e-12)
    if bias:
        _close(gb, ref[3], 1e-12)
    else:
        assert gb is None
    scored = xentkit.linear_cross_entropy(x, w, t, linear_bias=b if bias else None, weight=cw,
                                          chunk_size=5, **kw)
    _close(scored, loss, 1e-13)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 100, None])
def test_chunk_sizes_and_3d_input(chunk):
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (3, 11), 9, 30)
    loss, gx, gw, gb = xentkit.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=chunk,
                                                    grad=True)
    ref = _reference(x, w, t, b)
    _close(loss, ref[0], 1e-12)
    _close(gx, ref[1], 1e-12)
    assert gx.shape == x.shape
    _close(gw, ref[2], 1e-12)
    _close(gb, ref[3], 1e-12)
    per = xentkit.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=chunk,
                                       reduction="none")
    assert per.shape == (3, 11)
    _close(per, _reference(x, w, t, b, red="none")[0], 1e-12)


def test_float32_within_1e5_of_float64():
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (300,), 64, 2000)
    loss, gx, gw, gb = xentkit.linear_cross_entropy(
        x.astype(np.float32), w.astype(np.float32), t, linear_bias=b.astype(np.float32),
        chunk_size=64, grad=True, z_loss=1e-4)
    assert gx.dtype == np.float32 and gw.dtype == np.float32
    ref = _reference(x.astype(np.float32), w.astype(np.float32), t, b.astype(np.float32),
                     z=1e-4)
    assert abs(loss - ref[0]) <= 1e-5 * abs(ref[0])
    for got, want in zip((gx, gw, gb), ref[1:]):
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_ignored_chunks_skip_and_give_zero_rows():
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (40,), 6, 20, ignore_share=0.0)
    t[8:24] = -100  # two whole chunks of 8 ignored
    loss, gx, gw, gb = xentkit.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=8,
                                                    grad=True)
    ref = _reference(x, w, t, b)
    _close(loss, ref[0], 1e-12)
    assert np.all(gx[8:24] == 0)
    _close(gx, ref[1], 1e-12)
    _close(gw, ref[2], 1e-12)
    per = xentkit.linear_cross_entropy(x, w, t, chunk_size=8, reduction="none")
    assert np.all(per[8:24] == 0)


def test_everything_ignored_is_nan_mean_and_zero_gradients():
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (10,), 4, 7)
    t[:] = 5  # a real class, ignored
    loss, gx, gw, gb = xentkit.linear_cross_entropy(x, w, t, linear_bias=b, ignore_index=5,
                                                    grad=True)
    ref = F.cross_entropy(torch.tensor(x @ w.T + b), torch.tensor(t), ignore_index=5)
    assert np.isnan(loss) and torch.isnan(ref)
    assert not gx.any() and not gw.any() and not gb.any()
    assert xentkit.linear_cross_entropy(x, w, t, ignore_index=5, reduction="sum") == 0.0


def test_empty_batch():
    w = np.ones((5, 3))
    loss, gx, gw, gb = xentkit.linear_cross_entropy(np.zeros((0, 3)), w, np.zeros(0, np.int64),
                                                    reduction="sum", grad=True)
    assert loss == 0.0 and gx.shape == (0, 3) and not gw.any() and gb is None


def test_default_chunk_rows():
    assert _linear.default_chunk_rows(2048, 32000, 4) == 192      # a tenth of the logits
    assert _linear.default_chunk_rows(4096, 128256, 4) == 192     # 96 MiB
    assert _linear.default_chunk_rows(10, 50, 4) == 10            # never more than N
    assert _linear.default_chunk_rows(100000, 10 ** 7, 4) == 32   # at least 32 rows


@pytest.mark.parametrize("call, error, words", [
    (dict(w=np.zeros((5, 4))), ValueError, ["(5, 3)", "(7, 3)", "(5, 4)"]),
    (dict(w=np.zeros(5)), ValueError, ["2-D", "(5,)"]),
    (dict(t=np.zeros(6, np.int64)), ValueError, ["(7,)", "(6,)"]),
    (dict(t=np.zeros(7)), TypeError, ["integer", "float64"]),
    (dict(b=np.zeros(4)), ValueError, ["linear_bias", "5", "(4,)"]),
    (dict(cw=np.zeros(6)), ValueError, ["weight", "5", "(6,)"]),
    (dict(kw={"softcap": 0.0}), ValueError, ["softcap", "> 0", "0.0"]),
    (dict(kw={"softcap": -1.0}), ValueError, ["softcap", "-1.0"]),
    (dict(kw={"z_loss": -1e-3}), ValueError, ["z_loss", ">= 0"]),
    (dict(kw={"label_smoothing": 1.5}), ValueError, ["label_smoothing", "1.5"]),
    (dict(kw={"reduction": "avg"}), ValueError, ["reduction", "'avg'"]),
    (dict(kw={"chunk_size": 0}), ValueError, ["chunk_size", "0"]),
    (dict(kw={"chunk_size": 2.5}), TypeError, ["chunk_size", "2.5"]),
    (dict(x=np.zeros((7, 3), np.float16)), TypeError, ["xentkit.torch", "float16"]),
    (dict(x=np.zeros((7, 3), np.int64)), TypeError, ["int64"]),
])
def test_bad_input(call, error, words):
    x = call.get("x", np.zeros((7, 3)))
    w = call.get("w", np.zeros((5, 3)))
    t = call.get("t", np.zeros(7, np.int64))
    with pytest.raises(error) as info:
        xentkit.linear_cross_entropy(x, w, t, linear_bias=call.get("b"), weight=call.get("cw"),
                                     **call.get("kw", {}))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_label_raises_before_any_product():
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (50,), 4, 9)
    t[47] = 9
    with pytest.raises(xentkit.LabelError) as info:
        xentkit.linear_cross_entropy(x, w, t, chunk_size=4, grad=True)
    assert info.value.index == 47 and "9" in str(info.value)


def test_torch_reference_error_shapes_named():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\(6, 3\).*\(6, 2\)"):
        xt.linear_cross_entropy(x, torch.zeros(6, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(xentkit.LabelError):
        xt.linear_cross_entropy(x, torch.zeros(6, 3), torch.full((4,), 6))


# ---- xentkit.torch ------------------------------------------------------------------------------

@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"eps": 0.1, "z": 1e-2, "weights": True},
                                     {"cap": 4.0, "z": 1e-3}], ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
def test_torch_matches_torch_float64(red, options, bias):
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (2, 13), 10, 33)
    cw = rng.random(33) + 0.5 if options.get("weights") else None
    xq = torch.tensor(x, requires_grad=True)
    wq = torch.tensor(w, requires_grad=True)
    bq = torch.tensor(b, requires_grad=True) if bias else None
    kw = dict(reduction=red, label_smoothing=options.get("eps", 0.0), z_loss=options.get("z", 0.0),
              softcap=options.get("cap"))
    loss = xt.linear_cross_entropy(xq, wq, torch.tensor(t), linear_bias=bq,
                                   weight=None if cw is None else torch.tensor(cw), chunk_size=6,
                                   **kw)
    upstream = rng.standard_normal(loss.shape)
    loss.backward(torch.tensor(upstream))
    ref = _reference(x, w, t, b if bias else None, cw, red=red, eps=kw["label_smoothing"],
                     z=kw["z_loss"], cap=kw["softcap"], upstream=upstream)
    _close(loss.detach().numpy(), ref[0], 1e-12)
    _close(xq.grad.numpy(), ref[1], 1e-12)
    _close(wq.grad.numpy(), ref[2], 1e-12)
    if bias:
        _close(bq.grad.numpy(), ref[3], 1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                        (torch.float16, 5e-3)])
def test_torch_lower_precision(dtype, tol):
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (40,), 16, 64)
    xq = torch.tensor(x).to(dtype).requires_grad_()
    wq = torch.tensor(w).to(dtype).requires_grad_()
    bq = torch.tensor(b).to(dtype).requires_grad_()
    loss = xt.linear_cross_entropy(xq, wq, torch.tensor(t), linear_bias=bq, chunk_size=16)
    loss.backward()
    assert loss.dtype == dtype and xq.grad.dtype == dtype and wq.grad.dtype == dtype
    ref = _reference(xq.detach().double().numpy(), wq.detach().double().numpy(), t,
                     bq.detach().double().numpy())
    assert abs(float(loss) - ref[0]) <= tol * abs(ref[0])
    for got, want in zip((xq.grad, wq.grad, bq.grad), ref[1:]):
        assert np.max(np.abs(got.double().numpy() - want)) <= tol * np.max(np.abs(want))


def test_torch_frozen_head_and_no_grad():
    rng = np.random.default_rng()
    x, w, b, t = _problem(rng, (20,), 5, 11)
    xq = torch.tensor(x, requires_grad=True)
    wq = torch.tensor(w)  # frozen
    loss = xt.linear_cross_entropy(xq, wq, torch.tensor(t), chunk_size=7)
    loss.backward()
    assert wq.grad is None
    _close(xq.grad.numpy(), _reference(x, w, t)[1], 1e-12)
    with torch.no_grad():
        scored = xt.linear_cross_entropy(torch.tensor(x), wq, torch.tensor(t), reduction="none")
    _close(scored.numpy(), _reference(x, w, t, red="none")[0], 1e-12)


def test_torch_second_derivative_raises():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = xt.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(loss, x, create_graph=True)
    (gx,) = torch.autograd.grad(xt.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3])), x)
    assert gx.shape == x.shape


def test_torch_opcheck_and_compile():
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 4, 5, -100, 1, 2])
    for red in ("mean", "none"):
        torch.library.opcheck(torch.ops.xentkit.linear_cross_entropy.default,
                              (x, w, t, b, None, -100, red, 0.1, 1e-3, None, 4))

    def step(x, w, b):
        return xt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=4, z_loss=1e-3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, b)
    got.backward()
    grads = [v.grad.clone() for v in (x, w, b)]
    for v in (x, w, b):
        v.grad = None
    want = step(x, w, b)
    want.backward()
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for g, v in zip(grads, (x, w, b)):
        assert torch.allclose(g, v.grad, rtol=1e-12, atol=1e-15)


def test_torch_module_and_state_dict():
    torch.manual_seed(0)
    mine = xt.LinearCrossEntropyLoss(8, 21, bias=True, dtype=torch.float64, label_smoothing=0.1,
                                     chunk_size=5)
    theirs = torch.nn.LinearCrossEntropyLoss(8, 21, bias=True, dtype=torch.float64,
                                             label_smoothing=0.1)
    theirs.load_state_dict(mine.state_dict())
    mine.load_state_dict(theirs.state_dict())
    x = torch.randn(30, 8, dtype=torch.float64)
    t = torch.randint(0, 21, (30,))
    a = mine(x, t)
    b = theirs(x, t)
    assert torch.allclose(a, b, rtol=1e-12)
    a.backward()
    b.backward()
    assert torch.allclose(mine.linear.weight.grad, theirs.linear.weight.grad, rtol=1e-10,
                          atol=1e-14)
    assert torch.allclose(mine.linear.bias.grad, theirs.linear.bias.grad, rtol=1e-10, atol=1e-14)


def test_torch_matches_f_linear_cross_entropy_chunked():
    x = torch.randn(50, 16, dtype=torch.float64)
    w = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 40, (50,))
    t[::7] = -100
    ours = xt.linear_cross_entropy(x, w, t)
    theirs = F.linear_cross_entropy(x, w, t, options=torch.nn.LinearCrossEntropyOptions())
    assert torch.allclose(ours, theirs, rtol=1e-12)


# ---- memory: a fresh process, RSS ----------------------------------------------------------------

@pytest.mark.parametrize("grad", [False, True])
def test_peak_memory_is_a_fraction_of_the_logits(grad):
    from xentkit import _bench

    n, d, v = 2048, 32, 16000
    grown = _bench.linear_peak_bytes(n, d, v, grad, timeout=300)
    outputs = (n * d + v * d) * 4 if grad else n * 4
    logits = n * v * 4
    assert 0 < grown - outputs <= logits / 8, (grown, outputs, logits)


# ---- CUDA (marked gpu: skipped without a device) -------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs PyTorch with CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{}, {"z_loss": 1e-3, "softcap": 30.0}], ids=["plain", "zcap"])
def test_cuda_tensors_match_cpu(dtype, red, opts):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=gen).to(dtype)
    w = (torch.randn(1000, 64, generator=gen) / 8).to(dtype)
    b = torch.randn(1000, generator=gen).to(dtype)
    t = torch.randint(0, 1000, (300,), generator=gen)
    t[::9] = -100
    out = []
    for device in ("cpu", "cuda"):
        xi, wi, bi = (v.to(device).requires_grad_() for v in (x, w, b))
        loss = xt.linear_cross_entropy(xi, wi, t.to(device), linear_bias=bi, reduction=red,
                                       chunk_size=128, label_smoothing=0.1, **opts)
        loss.backward(torch.ones_like(loss))
        assert loss.device.type == device and wi.grad.device.type == device
        out.append([v.float().cpu() for v in (loss, xi.grad, wi.grad, bi.grad)])
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for got, want in zip(out[1], out[0]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
