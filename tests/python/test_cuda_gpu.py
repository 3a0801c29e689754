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
