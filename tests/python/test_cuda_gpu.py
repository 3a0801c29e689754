"""Device arrays on a CUDA device (skipped without one): every public function on CuPy and
PyTorch CUDA arrays against the host result on the same data, the kinds of the results, the 0-d
reduced loss, the stream argument, sync=True errors and run-to-run determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import xentkit

pytestmark = pytest.mark.gpu


def _torch_cuda() -> bool:
    """PyTorch with a usable CUDA device (probed only where xentkit has one)."""
    if not xentkit.cuda_available():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _cupy() -> bool:
    if not xentkit.cuda_available():
        return False
    return importlib.util.find_spec("cupy") is not None


needs_torch = pytest.mark.skipif(not _torch_cuda(), reason="needs PyTorch with CUDA")
needs_cupy = pytest.mark.skipif(not _cupy(), reason="needs CuPy")

TOL = {"float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2), "float32": (1e-5, 1e-6),
       "float64": (1e-12, 1e-13)}


def _case(rng, name, dtype):
    """(function, host args, device-arg indexes, kwargs) on fresh random data."""
    n, c = 37, 11
    x = rng.standard_normal((n, c)) * 3
    p = rng.uniform(0.01, 0.99, (n, c))
    t = rng.uniform(0, 1, (n, c))
    y = rng.integers(0, c, n)
    q = rng.dirichlet(np.ones(c), n)
    w = rng.uniform(0.5, 2, c)
    return {
        "sigmoid_cross_entropy_loss": (xentkit.sigmoid_cross_entropy_loss, (x, t), {}),
        "softmax_with_loss": (xentkit.softmax_with_loss, (x, y), {"prob": True}),
        "binary_cross_entropy": (xentkit.binary_cross_entropy, (p, t, w), {"grad": True}),
        "binary_cross_entropy_with_logits": (xentkit.binary_cross_entropy_with_logits,
                                             (x, t, None), {"pos_weight": w, "grad": True}),
        "cross_entropy": (xentkit.cross_entropy, (x, y, w),
                          {"grad": True, "label_smoothing": 0.1}),
        "cross_entropy_prob": (xentkit.cross_entropy, (x, q), {"grad": True,
                                                               "reduction": "sum"}),
        "nll_loss": (xentkit.nll_loss, (x, y), {"grad": True, "reduction": "none"}),
        "log_softmax": (xentkit.log_softmax, (x,), {}),
        "softmax": (xentkit.softmax, (x,), {"dim": 0}),
        "sigmoid_cross_entropy_with_logits": (xentkit.sigmoid_cross_entropy_with_logits,
                                              (t, x), {"grad": True}),
        "softmax_cross_entropy_with_logits": (xentkit.softmax_cross_entropy_with_logits,
                                              (q, x), {"grad": True}),
        "sparse_softmax_cross_entropy_with_logits": (
            xentkit.sparse_softmax_cross_entropy_with_logits, (y, x), {"grad": True}),
    }[name]


NAMES = ["sigmoid_cross_entropy_loss", "softmax_with_loss", "binary_cross_entropy",
         "binary_cross_entropy_with_logits", "cross_entropy", "cross_entropy_prob", "nll_loss",
         "log_softmax", "softmax", "sigmoid_cross_entropy_with_logits",
         "softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits"]


def _cast_host(args, kwargs, dtype):
    """Real arrays in `dtype` (bfloat16: rounded through float32 by truncating the low bits'
    rounding to nearest), integer labels unchanged."""
    def cast(a):
        if a is None or a.dtype.kind in "iu":
            return a
        if dtype == "bfloat16":
            bits = a.astype(np.float32).view(np.uint32)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.view(np.float32)
        return a.astype(dtype)
    return ([cast(a) for a in args],
            {k: (cast(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()})


def _flatten(result):
    return list(result) if isinstance(result, tuple) else [result]


def _host_values(fn, args, kwargs, dtype):
    """The host reference: bfloat16 data computed in float32."""
    out = fn(*args, **kwargs)
    return [np.asarray(v, dtype=np.float64) if v is not None else None for v in _flatten(out)]


class _Torch:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def to_device(self, a, dtype):
        t = self.torch
        if a is None:
            return None
        if a.dtype.kind in "iu":
            return t.from_numpy(np.ascontiguousarray(a)).cuda()
        tdt = {"float16": t.float16, "bfloat16": t.bfloat16, "float32": t.float32,
               "float64": t.float64}[dtype]
        return t.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if dtype == "bfloat16"
                                                 else dtype)).cuda().to(tdt)

    def is_kind(self, v):
        return isinstance(v, self.torch.Tensor) and v.is_cuda

    def to_host(self, v):
        return v.detach().float().cpu().numpy().astype(np.float64) if v.dtype == \
            self.torch.bfloat16 else v.detach().cpu().numpy().astype(np.float64)



class _Cupy:
    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def to_device(self, a, dtype):
        if a is None:
            return None
        if a.dtype.kind in "iu":
            return self.cp.asarray(a)
        return self.cp.asarray(a.astype(dtype))

    def is_kind(self, v):
        return isinstance(v, self.cp.ndarray)

    def to_host(self, v):
        return self.cp.asnumpy(v).astype(np.float64)



_LIBS = {"torch": (_Torch, needs_torch), "cupy": (_Cupy, needs_cupy)}
# CuPy has no bfloat16 dtype.
_LIB_DTYPES = [("torch", d) for d in ("float16", "bfloat16", "float32", "float64")] + \
              [("cupy", d) for d in ("float16", "float32", "float64")]


@pytest.fixture(params=[pytest.param(k, marks=m) for k, (_, m) in _LIBS.items()])
def lib(request):
    return _LIBS[request.param][0]()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib_name, dtype",
                         [pytest.param(k, d, marks=_LIBS[k][1]) for k, d in _LIB_DTYPES])
def test_device_matches_host(lib_name, name, dtype):
    lib = _LIBS[lib_name][0]()
    rng = np.random.default_rng(hash((name, dtype)) % 2**32)
    fn, args, kwargs = _case(rng, name, dtype)
    hargs, hkw = _cast_host(args, kwargs, dtype)
    host_dtype = "float32" if dtype == "bfloat16" else dtype
    ref = _host_values(fn, [a if a is None or a.dtype.kind in "iu" else a.astype(host_dtype)
                            for a in hargs],
                       {k: (v.astype(host_dtype) if isinstance(v, np.ndarray) else v)
                        for k, v in hkw.items()}, dtype)
    dargs = [lib.to_device(a, dtype) for a in hargs]
    dkw = {k: (lib.to_device(v, dtype) if isinstance(v, np.ndarray) else v)
           for k, v in hkw.items()}
    out = _flatten(fn(*dargs, **dkw))
    assert len(out) == len(ref)
    rtol, atol = TOL[dtype]
    if dtype in ("float16", "bfloat16"):
        rtol, atol = rtol * 4, atol * 4
    for got, want in zip(out, ref):
        if want is None:
            assert got is None
            continue
        assert lib.is_kind(got), type(got)
        assert tuple(got.shape) == np.shape(want)
        np.testing.assert_allclose(lib.to_host(got), want, rtol=rtol, atol=atol)


def test_reduced_loss_is_0d_of_the_input_dtype(lib):
    rng = np.random.default_rng(1)
    x = lib.to_device(rng.standard_normal((8, 5)), "float32")
    y = lib.to_device(rng.integers(0, 5, 8), "float32")
    loss = xentkit.cross_entropy(x, y)
    assert lib.is_kind(loss) and tuple(loss.shape) == ()
    assert str(loss.dtype).endswith("float32")
    loss, diff = xentkit.softmax_with_loss(x, y)
    assert tuple(loss.shape) == () and tuple(diff.shape) == (8, 5)


def test_in_place_gradient(lib):
    rng = np.random.default_rng(2)
    h = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    want_loss, want_grad = xentkit.cross_entropy(h, y, grad=True)
    x = lib.to_device(h, "float32")
    loss, g = xentkit.cross_entropy(x, lib.to_device(y, "float32"), grad=x)
    assert g is x
    np.testing.assert_allclose(lib.to_host(x), want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(lib.to_host(loss)), want_loss, rtol=1e-5)


def test_sync_raises_label_error(lib):
    x = lib.to_device(np.zeros((3, 4)), "float32")
    y = lib.to_device(np.array([0, 7, 1]), "float32")
    with pytest.raises(xentkit.LabelError) as info:
        xentkit.cross_entropy(x, y, sync=True)
    assert info.value.index == 1 and info.value.value == 7
    loss = xentkit.cross_entropy(x, y)  # no sync: NaN, no error
    assert np.isnan(lib.to_host(loss))
    p = lib.to_device(np.array([0.5, 1.5]), "float32")
    with pytest.raises(ValueError):
        xentkit.binary_cross_entropy(p, lib.to_device(np.array([0.0, 1.0]), "float32"),
                                     sync=True)


def test_deterministic(lib):
    rng = np.random.default_rng(3)
    x = lib.to_device(rng.standard_normal((4096, 37)), "float32")
    y = lib.to_device(rng.integers(0, 37, 4096), "float32")
    first = lib.to_host(xentkit.cross_entropy(x, y))
    for _ in range(5):
        assert lib.to_host(xentkit.cross_entropy(x, y)).tobytes() == first.tobytes()


@needs_torch
def test_torch_stream_argument():
    import torch
    rng = np.random.default_rng(4)
    h = rng.standard_normal((64, 9)).astype(np.float32)
    y = rng.integers(0, 9, 64)
    want = xentkit.cross_entropy(h, y)
    x = torch.from_numpy(h).cuda()
    t = torch.from_numpy(y).cuda()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # the library's current stream
        a = xentkit.cross_entropy(x, t)
    b = xentkit.cross_entropy(x, t, stream=s)  # explicit stream object
    c = xentkit.cross_entropy(x, t, stream=s.cuda_stream)  # explicit handle
    torch.cuda.synchronize()
    for v in (a, b, c):
        assert abs(v.item() - want) <= 1e-5 * abs(want)


@needs_cupy
def test_cupy_stream_argument():
    import cupy as cp
    rng = np.random.default_rng(5)
    h = rng.standard_normal((64, 9)).astype(np.float32)
    y = rng.integers(0, 9, 64)
    want = xentkit.cross_entropy(h, y)
    x, t = cp.asarray(h), cp.asarray(y)
    s = cp.cuda.Stream(non_blocking=True)
    cp.cuda.get_current_stream().synchronize()
    with s:
        a = xentkit.cross_entropy(x, t)
    b = xentkit.cross_entropy(x, t, stream=s)
    s.synchronize()
    for v in (a, b):
        assert abs(float(v) - want) <= 1e-5 * abs(want)


@needs_torch
def test_device_array_without_a_library_kind():
    import torch

    class Plain:  # only the CUDA array interface: the results are xentkit.DeviceArray
        def __init__(self, t):
            self.t = t
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    x = torch.randn(5, 3, device="cuda")
    out = xentkit.log_softmax(Plain(x))
    assert isinstance(out, xentkit.DeviceArray)
    assert out.shape == (5, 3) and out.dtype == "float32"
    back = torch.from_dlpack(out)
    torch.testing.assert_close(back, torch.log_softmax(x, -1), rtol=1e-5, atol=1e-6)
    assert out.__cuda_array_interface__["version"] == 3


# ---- the first device run: what the review of the kernels asked to see ----------------------

def _torch():
    import torch

    return torch


_TORCH_DTYPES = ["float32", "float16", "bfloat16", "float64"]
_WINDOW = {"float32": (12128, 12129, 12288), "float16": (24256, 24257, 24576),
           "bfloat16": (24256, 24257, 24576), "float64": (6048, 6049, 6144)}


def _tol(dtype):
    rtol, atol = TOL[dtype]
    return (rtol * 4, atol * 4) if dtype in ("float16", "bfloat16") else (rtol, atol)


def _ref_cross_entropy(x, y, **kw):
    """PyTorch on the CPU in float64 on the same (rounded) values: loss and grad."""
    torch = _torch()
    xr = x.detach().cpu().double().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(xr, y.cpu(), **kw)
    loss.backward()
    return loss.detach(), xr.grad


@needs_torch
@pytest.mark.parametrize("dtype", _TORCH_DTYPES)
def test_staging_window_around_48_kib(dtype):
    """Rows whose staged size plus the kernel's static shared memory just passes 48 KiB."""
    torch = _torch()
    gen = torch.Generator().manual_seed(31)
    rtol, atol = _tol(dtype)
    for C in _WINDOW[dtype]:
        rows = 3 + C % 6
        x = (torch.randn(rows, C, generator=gen) * 3).to(getattr(torch, dtype)).cuda()
        y = torch.randint(0, C, (rows,), generator=gen).cuda()
        loss, grad = xentkit.cross_entropy(x, y, grad=True, sync=True)
        want, wgrad = _ref_cross_entropy(x, y)
        torch.testing.assert_close(loss.double().cpu(), want, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double().cpu(), wgrad, rtol=rtol, atol=atol)
        lp = torch.log_softmax(x.double(), 1)
        nl, ng = xentkit.nll_loss(lp.to(x.dtype), y, grad=True, sync=True)
        torch.testing.assert_close(
            nl.double().cpu(),
            torch.nn.functional.nll_loss(lp.to(x.dtype).double().cpu(), y.cpu()),
            rtol=rtol, atol=atol)
        assert ng.shape == x.shape
        p = xentkit.softmax(x, dim=1, sync=True)
        torch.testing.assert_close(p.double().cpu(), torch.softmax(x.double().cpu(), 1),
                                   rtol=rtol, atol=atol)


@needs_torch
@pytest.mark.parametrize("dtype, C", [("float32", 24577), ("float32", 81921),
                                      ("float32", 100003), ("float32", 128256),
                                      ("float32", 262144), ("bfloat16", 128256),
                                      ("float64", 20000)])
def test_long_rows_in_place_and_deterministic(dtype, C):
    torch = _torch()
    gen = torch.Generator().manual_seed(C)
    rtol, atol = _tol(dtype)
    x0 = (torch.randn(4, C, generator=gen) * 3).to(getattr(torch, dtype)).cuda()
    y = torch.randint(0, C, (4,), generator=gen).cuda()
    w = torch.rand(C, generator=gen).add(0.5).to(x0.dtype).cuda()
    want, wgrad = _ref_cross_entropy(x0, y, weight=w.double().cpu(), label_smoothing=0.1)
    bits = []
    for _ in range(2):
        x = x0.clone()
        loss, g = xentkit.cross_entropy(x, y, w, label_smoothing=0.1, grad=x, sync=True)
        assert g.data_ptr() == x.data_ptr()
        torch.testing.assert_close(loss.double().cpu(), want, rtol=rtol, atol=atol)
        torch.testing.assert_close(x.double().cpu(), wgrad, rtol=rtol, atol=atol)
        bits.append((loss.cpu(), x.cpu()))
    assert torch.equal(bits[0][0], bits[1][0]) and torch.equal(bits[0][1], bits[1][1])


@needs_torch
def test_two_threads_with_different_rows_keep_the_solo_bits():
    import threading

    torch = _torch()
    gen = torch.Generator().manual_seed(5)
    cases = []
    for C in (81921, 128256, 262144):
        x = torch.randn(4, C, generator=gen).cuda()
        y = torch.randint(0, C, (4,), generator=gen).cuda()
        loss, g = xentkit.cross_entropy(x, y, grad=True, sync=True)
        cases.append((x, y, loss.cpu(), g.cpu()))
    results = {}

    def work(i):
        x, y, _, _ = cases[i]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(10):
                loss, g = xentkit.cross_entropy(x, y, grad=True)
            s.synchronize()
        results[i] = (loss.cpu(), g.cpu())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (_, _, loss, g) in enumerate(cases):
        assert torch.equal(results[i][0], loss) and torch.equal(results[i][1], g), i


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_explicit_stream_is_ordered_after_torchs_pending_writes(dtype):
    """float32 (CAI v2, no stream) and bfloat16 (DLPack) alike: no wait_stream by the caller."""
    torch = _torch()
    gen = torch.Generator().manual_seed(7)
    src = torch.randn(64, 5000, generator=gen).to(getattr(torch, dtype)).cuda()
    y = torch.randint(0, 5000, (64,), generator=gen).cuda()
    want, _ = _ref_cross_entropy(src, y)
    s = torch.cuda.Stream()
    for _ in range(3):
        x = torch.zeros_like(src)
        torch.cuda.synchronize()
        torch.cuda._sleep(100_000_000)  # on torch's current stream, then the write
        x.copy_(src)
        loss = xentkit.cross_entropy(x, y, stream=s)
        s.synchronize()
        torch.testing.assert_close(loss.double().cpu(), want, rtol=1e-2, atol=1e-2)


@needs_torch
def test_a_temporary_argument_lives_until_the_kernels_read_it():
    torch = _torch()
    gen = torch.Generator().manual_seed(8)
    host = torch.randn(256, 4096, generator=gen)
    y = torch.randint(0, 4096, (256,), generator=gen).cuda()
    want, _ = _ref_cross_entropy(host, y)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(100_000_000)  # the call's kernels wait behind this
    loss = xentkit.cross_entropy(host.cuda(), y, stream=s)  # the only reference dies here
    junk = [torch.full((256, 4096), float("nan"), device="cuda") for _ in range(8)]
    s.synchronize()
    torch.testing.assert_close(loss.double().cpu(), want, rtol=1e-5, atol=1e-6)
    del junk


def test_cuda_available_means_the_kernels_load():
    if not xentkit.cuda_available():
        pytest.skip("needs a CUDA device")
    assert xentkit._core.device_kernel_problem() == ""


@needs_torch
def test_beyond_2_31_elements():
    """Flat indices past 2^31 (int64 index math), sampled against the CPU; a bad probability
    past 2^31 is reported with its index."""
    torch = _torch()
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs 40 GiB of free device memory")
    gen = torch.Generator(device="cuda").manual_seed(9)
    # bf16 cross_entropy, warp layout, outer * C > 2^31
    rows, C = 2**21 + 3, 1024
    x = torch.randn(rows, C, device="cuda", generator=gen).to(torch.bfloat16)
    y = torch.randint(0, C, (rows,), device="cuda", generator=gen)
    per, g = xentkit.cross_entropy(x, y, reduction="none", grad=True, sync=True)
    pick = torch.tensor([0, 1, 2**20, rows - 2, rows - 1], device="cuda")
    xs = x[pick].double().cpu().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(xs, y[pick].cpu(), reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(per[pick].double().cpu(), ref.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g[pick].double().cpu(), xs.grad, rtol=5e-2, atol=5e-2)
    del x, y, per, g
    # positions layout (1, 4, 2^29 + 3)
    inner = 2**29 + 3
    x = torch.randn(1, 4, inner, device="cuda", generator=gen)
    y = torch.randint(0, 4, (1, inner), device="cuda", generator=gen)
    per = xentkit.cross_entropy(x, y, reduction="none", sync=True)
    cols = torch.tensor([0, inner // 2, inner - 1], device="cuda")
    ref = torch.nn.functional.cross_entropy(x[0][:, cols].T.double().cpu(), y[0][cols].cpu(),
                                            reduction="none")
    torch.testing.assert_close(per[0][cols].double().cpu(), ref, rtol=1e-5, atol=1e-6)
    del x, y, per
    # float16 BCE with logits and BCE, n = 2^31 + 17
    n = 2**31 + 17
    x = torch.rand(n, device="cuda", generator=gen).to(torch.float16)
    t = torch.rand(n, device="cuda", generator=gen).to(torch.float16)
    loss, g = xentkit.binary_cross_entropy_with_logits(x, t, reduction="none", grad=True,
                                                       sync=True)
    idx = torch.tensor([0, 2**31 - 1, 2**31, n - 1], device="cuda")
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        x[idx].double().cpu(), t[idx].double().cpu(), reduction="none")
    torch.testing.assert_close(loss[idx].double().cpu(), ref, rtol=4e-3, atol=4e-3)
    del loss, g
    x[2**31 + 5] = 1.5  # not a probability
    with pytest.raises(ValueError, match=str(2**31 + 5)):
        xentkit.binary_cross_entropy(x, t, sync=True)


@needs_torch
@pytest.mark.parametrize("dtype", _TORCH_DTYPES)
@pytest.mark.parametrize("C", [11, 4099, 32000])
def test_z_loss_and_softcap_on_the_device(dtype, C):
    """z_loss and softcap (alone and together, with weights, smoothing and ignored rows) on the
    device against the host kernel on the same rounded values, in float64, and bit-identical
    from run to run."""
    torch = _torch()
    gen = torch.Generator().manual_seed(C + 7)
    rtol, atol = _tol(dtype)
    rows = 9
    x = (torch.randn(rows, C, generator=gen) * 8).to(getattr(torch, dtype))
    y = torch.randint(0, C, (rows,), generator=gen)
    y[3] = -100
    w = torch.rand(C, generator=gen).add(0.5).to(x.dtype)
    for kw in (dict(z_loss=1e-3), dict(softcap=5.0), dict(z_loss=1e-2, softcap=30.0,
                                                            label_smoothing=0.1)):
        for red in ("mean", "none"):
            want = xentkit.cross_entropy(x.double().numpy(), y.numpy(), w.double().numpy(),
                                         reduction=red, grad=True, **kw)
            got = [xentkit.cross_entropy(x.cuda(), y.cuda(), w.cuda(), reduction=red, grad=True,
                                         sync=True, **kw) for _ in range(2)]
            for value, ref in zip(got[0], want):
                torch.testing.assert_close(value.double().cpu(), torch.from_numpy(ref),
                                           rtol=rtol, atol=atol)
            for a, b in zip(*got):
                assert torch.equal(a, b)
