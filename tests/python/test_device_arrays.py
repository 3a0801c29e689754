"""Device arrays on a machine without a usable device: recognising CUDA array interface and DLPack
producers (fakes), argument checks that name the argument, the stream rule, and the clear error
every public loss raises when the device path cannot run."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import xentkit
from xentkit import _device

pytestmark = pytest.mark.skipif(xentkit.cuda_available(), reason="checks the no-device behaviour")


class FakeCAI:
    """An object exposing only __cuda_array_interface__ (no memory behind it)."""

    def __init__(self, shape, typestr="<f4", ptr=0x10000, strides=None, stream=None, version=3,
                 readonly=False, dtype=None):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
            "strides": strides, "version": version}
        if version >= 3:
            self.__cuda_array_interface__["stream"] = stream
        if dtype is not None:
            self.dtype = dtype


# ---- a DLPack producer built with ctypes --------------------------------------------------------

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    pass


DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                            ("deleter", DELETER)]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]


class FakeDLPack:
    """A producer of "dltensor" capsules; records the streams it was asked for and the deleter
    calls."""

    def __init__(self, shape, code=2, bits=32, device=(2, 0), data=0x20000, strides=None,
                 byte_offset=0, lanes=1):
        self.shape, self.code, self.bits, self.device = tuple(shape), code, bits, device
        self.data, self.strides, self.byte_offset, self.lanes = data, strides, byte_offset, lanes
        self.streams = []
        self.deleted = 0
        self.capsules = []
        self._keep = []

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        shape = (ctypes.c_int64 * max(len(self.shape), 1))(*self.shape)
        strides = None
        if self.strides is not None:
            strides = (ctypes.c_int64 * len(self.strides))(*self.strides)
        m = DLManagedTensor()
        m.dl_tensor.data = self.data
        m.dl_tensor.device = DLDevice(*self.device)
        m.dl_tensor.ndim = len(self.shape)
        m.dl_tensor.dtype = DLDataType(self.code, self.bits, self.lanes)
        m.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        if strides is not None:
            m.dl_tensor.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
        m.dl_tensor.byte_offset = self.byte_offset

        def deleter(_ptr):
            self.deleted += 1

        cb = DELETER(deleter)
        m.deleter = cb
        self._keep.append((m, shape, strides, cb))
        capsule = _capsule_new(ctypes.addressof(m), b"dltensor", None)
        self.capsules.append(capsule)
        return capsule


# ---- recognising device arrays -----------------------------------------------------------------

def test_import_and_no_device():
    assert xentkit.cuda_available() is False
    assert issubclass(xentkit.CudaUnavailableError, RuntimeError)
    assert "CudaUnavailableError" in xentkit.__all__


def test_host_arrays_are_not_device_arrays():
    assert not _device.is_device_array(np.zeros(3))
    assert not _device.is_device_array([1.0, 2.0])
    assert not _device.is_device_array(None)
    assert not _device.is_device_array(FakeDLPack((3,), device=(1, 0)))
    assert _device.is_device_array(FakeCAI((3,)))
    assert _device.is_device_array(FakeDLPack((3,)))
    assert _device.is_device_array(FakeDLPack((3,), device=(13, 0)))  # managed memory


def test_torch_cpu_tensor_is_host():
    torch = pytest.importorskip("torch")
    assert not _device.is_device_array(torch.zeros(3))


@pytest.mark.parametrize("typestr,dtype", [("<f2", "float16"), ("<f4", "float32"),
                                           ("<f8", "float64"), ("|i1", "int8"), ("<i8", "int64"),
                                           ("|u1", "uint8"), ("<u4", "uint32")])
def test_cai_dtypes(typestr, dtype):
    a = _device.parse(FakeCAI((2, 3), typestr, ptr=0x1234), "scores", 0)
    assert (a.dtype, a.shape, a.ptr, a.via, a.readonly) == (dtype, (2, 3), 0x1234, "cai", False)


def test_cai_strides_stream_readonly_version2():
    item = 4
    a = _device.parse(FakeCAI((2, 3), strides=(3 * item, item), stream=77, readonly=True),
                      "x", 0)
    assert a.stream == 77 and a.readonly
    assert _device.parse(FakeCAI((2, 3), stream=1), "x", 0).stream == 0  # legacy default
    v2 = _device.parse(FakeCAI((4,), version=2), "x", 0)
    assert v2.stream is None
    # size-1 dimensions may carry any stride; empty arrays are contiguous
    _device.parse(FakeCAI((2, 1, 3), strides=(12, 999, 4)), "x", 0)
    _device.parse(FakeCAI((0, 3), strides=(4, 8)), "x", 0)


def test_cai_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^labels: expected a C-contiguous"):
        _device.parse(FakeCAI((2, 3), strides=(4, 8)), "labels", 0)
    with pytest.raises(ValueError, match=r"^x: __cuda_array_interface__ stream 0"):
        _device.parse(FakeCAI((2,), stream=0), "x", 0)
    with pytest.raises(TypeError, match=r"^x: typestr '<V2'"):
        _device.parse(FakeCAI((2,), "<V2"), "x", 0)
    with pytest.raises(TypeError, match=r"^x: expected a little-endian"):
        _device.parse(FakeCAI((2,), ">f4"), "x", 0)
    with pytest.raises(TypeError, match=r"^x: typestr '<c8'"):
        _device.parse(FakeCAI((2,), "<c8"), "x", 0)


def test_cai_bfloat16_from_dtype_attribute():
    a = _device.parse(FakeCAI((2,), "<V2", dtype="torch.bfloat16"), "x", 0)
    assert a.dtype == "bfloat16"


# ---- DLPack ----------------------------------------------------------------------------------

def test_dlpack_parse_and_deleter():
    p = FakeDLPack((2, 5), code=2, bits=64, device=(2, 3), data=0x4000, byte_offset=16)
    a = _device.parse(p, "input", 1234)
    assert (a.dtype, a.shape, a.ptr, a.device, a.via) == ("float64", (2, 5), 0x4010, 3, "dlpack")
    assert p.streams == [1234]
    assert _capsule_name(p.capsules[0]) == b"used_dltensor"
    assert p.deleted == 0
    a.close()
    assert p.deleted == 1
    a.close()
    assert p.deleted == 1


def test_dlpack_default_stream_is_passed_as_1():
    p = FakeDLPack((3,))
    _device.parse(p, "x", 0).close()
    assert p.streams == [1]


@pytest.mark.parametrize("code,bits,dtype", [(2, 16, "float16"), (4, 16, "bfloat16"),
                                             (2, 32, "float32"), (0, 32, "int32"),
                                             (1, 8, "uint8")])
def test_dlpack_dtypes(code, bits, dtype):
    a = _device.parse(FakeDLPack((4,), code=code, bits=bits), "x", 0)
    assert a.dtype == dtype
    a.close()


def test_dlpack_errors_release_the_tensor():
    p = FakeDLPack((2, 3), strides=(1, 2))
    with pytest.raises(ValueError, match=r"^logits: expected a C-contiguous"):
        _device.parse(p, "logits", 0)
    assert p.deleted == 1
    q = FakeDLPack((2,), code=5, bits=64)  # complex
    with pytest.raises(TypeError, match=r"^x: unsupported DLPack dtype"):
        _device.parse(q, "x", 0)
    assert q.deleted == 1
    r = FakeDLPack((2,), lanes=4)
    with pytest.raises(TypeError, match="lanes"):
        _device.parse(r, "x", 0)
    assert r.deleted == 1


def test_dlpack_tensor_released_after_a_refused_call():
    x = FakeDLPack((4, 3))
    t = FakeDLPack((4,), code=0, bits=64)
    with pytest.raises(xentkit.CudaUnavailableError):
        xentkit.cross_entropy(x, t)
    assert x.deleted == 1 and t.deleted == 1  # at once, not at garbage collection
    import gc

    gc.collect()
    assert x.deleted == 1 and t.deleted == 1


# ---- streams --------------------------------------------------------------------------------

class CupyLike:
    ptr = 0xABC


class TorchLike:
    cuda_stream = 0xDEF


class ProtocolLike:
    def __cuda_stream__(self):
        return (0, 0x123)


def test_stream_handles():
    assert _device.stream_handle(0) == 0
    assert _device.stream_handle(1) == 0
    assert _device.stream_handle(2) == 2
    assert _device.stream_handle(0x5555) == 0x5555
    assert _device.stream_handle(CupyLike()) == 0xABC
    assert _device.stream_handle(TorchLike()) == 0xDEF
    assert _device.stream_handle(ProtocolLike()) == 0x123
    assert _device.stream_handle(np.int64(9)) == 9
    with pytest.raises(TypeError, match=r"^stream: "):
        _device.stream_handle(True)
    with pytest.raises(TypeError, match=r"^stream: "):
        _device.stream_handle("s")
    with pytest.raises(ValueError, match=r"^stream: "):
        _device.stream_handle(-3)


def test_stream_rule_order():
    assert _device.resolve_stream(TorchLike(), 5, 7) == 0xDEF
    assert _device.resolve_stream(None, 5, 7) == 5
    assert _device.resolve_stream(None, None, 7) == 7
    assert _device.resolve_stream(None, None, 1) == 0
    assert _device.resolve_stream(None, None, None) == 0
    assert _device.resolve_stream(3, None, None) == 3


def test_call_picks_the_declared_stream_and_explicit_one():
    c = _device.Call(FakeCAI((4, 3), stream=0x77), "input", None, False)
    assert c.stream == 0x77
    c = _device.Call(FakeCAI((4, 3), stream=0x77), "input", CupyLike(), False)
    assert c.stream == 0xABC
    c = _device.Call(FakeCAI((4, 3)), "input", None, False)
    assert c.stream == 0
    p = FakeDLPack((4, 3))
    c = _device.Call(p, "input", 0x99, False)
    assert c.stream == 0x99 and p.streams == [0x99]
    with pytest.raises(TypeError, match=r"^sync: "):
        _device.Call(FakeCAI((4, 3)), "input", None, 1)


# ---- the public losses ----------------------------------------------------------------------

def _calls():
    f = FakeCAI
    return [
        ("sigmoid_cross_entropy_loss", "scores",
         lambda: xentkit.sigmoid_cross_entropy_loss(f((4, 3)), f((4, 3), ptr=0x90000))),
        ("softmax_with_loss", "scores",
         lambda: xentkit.softmax_with_loss(f((4, 3)), f((4,), "<i4", ptr=0x90000), prob=True)),
        ("binary_cross_entropy", "input",
         lambda: xentkit.binary_cross_entropy(f((4, 3)), f((4, 3), ptr=0x90000),
                                              f((3,), ptr=0xA0000))),
        ("binary_cross_entropy_with_logits", "input",
         lambda: xentkit.binary_cross_entropy_with_logits(
             f((4, 3)), f((4, 3), ptr=0x90000), pos_weight=f((3,), ptr=0xA0000), grad=True)),
        ("cross_entropy", "input",
         lambda: xentkit.cross_entropy(f((4, 3)), f((4,), "<i8", ptr=0x90000))),
        ("cross_entropy_prob", "input",
         lambda: xentkit.cross_entropy(f((4, 3), "<f2"), f((4, 3), "<f2", ptr=0x90000),
                                       reduction="none")),
        ("nll_loss", "input",
         lambda: xentkit.nll_loss(f((4, 3), "<f8"), f((4,), "|u1", ptr=0x90000), grad=True)),
        ("log_softmax", "input", lambda: xentkit.log_softmax(f((4, 3)))),
        ("softmax", "input", lambda: xentkit.softmax(f((4, 3)), dim=0)),
        ("sigmoid_cross_entropy_with_logits", "logits",
         lambda: xentkit.sigmoid_cross_entropy_with_logits(f((4, 3), ptr=0x90000), f((4, 3)))),
        ("softmax_cross_entropy_with_logits", "logits",
         lambda: xentkit.softmax_cross_entropy_with_logits(f((4, 3), ptr=0x90000), f((4, 3)))),
        ("sparse_softmax_cross_entropy_with_logits", "logits",
         lambda: xentkit.sparse_softmax_cross_entropy_with_logits(f((4,), "<i8", ptr=0x90000),
                                                                  f((4, 3)), grad=True)),
    ]


@pytest.mark.parametrize("name,arg,call", _calls(), ids=[c[0] for c in _calls()])
def test_every_loss_refuses_device_arrays_clearly(name, arg, call):
    with pytest.raises(xentkit.CudaUnavailableError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"{arg}: a CUDA device array")
    assert "no usable CUDA device" in msg or "no CUDA kernels" in msg


def test_bfloat16_via_dlpack_reaches_the_device_check():
    x = FakeDLPack((4, 3), code=4, bits=16)
    t = FakeDLPack((4,), code=0, bits=64, data=0x90000)
    with pytest.raises(xentkit.CudaUnavailableError):
        xentkit.cross_entropy(x, t)


def test_argument_errors_come_first_and_name_the_argument():
    f = FakeCAI
    with pytest.raises(TypeError, match=r"^target: expected dtype float32 \(that of input\)"):
        xentkit.binary_cross_entropy(f((4, 3)), f((4, 3), "<f8"))
    with pytest.raises(ValueError, match=r"^target: expected the input's shape"):
        xentkit.binary_cross_entropy(f((4, 3)), f((4, 2)))
    with pytest.raises(TypeError, match=r"^input: expected dtype float16, bfloat16"):
        xentkit.cross_entropy(f((4, 3), "<i4"), f((4,), "<i8"))
    with pytest.raises(TypeError, match=r"^target: expected class indices of an integer"):
        xentkit.nll_loss(f((4, 3)), f((4,), "<f4"))
    with pytest.raises(ValueError, match=r"^target: expected class indices of shape"):
        xentkit.cross_entropy(f((4, 3)), f((5,), "<i8"))
    with pytest.raises(TypeError, match=r"^target: expected a floating dtype for class prob"):
        xentkit.cross_entropy(f((4, 3)), f((4, 3), "<i8"))
    with pytest.raises(ValueError, match=r"^labels: expected 8 values"):
        xentkit.softmax_with_loss(f((2, 3, 4)), f((4,), "<i8"))
    with pytest.raises(TypeError, match=r"^labels: expected an integer, float32 or float64"):
        xentkit.softmax_with_loss(f((2, 3)), f((2,), "<f2"))
    with pytest.raises(ValueError, match=r"^weight: expected a 1-D array of 3 class weights"):
        xentkit.cross_entropy(f((4, 3)), f((4,), "<i8"), weight=f((4,)))
    with pytest.raises(ValueError, match=r"^weight: a device weight of shape \(4, 1, 2\)"):
        xentkit.binary_cross_entropy_with_logits(f((4, 3, 2)), f((4, 3, 2)), f((4, 1, 2)))
    with pytest.raises(ValueError, match=r"^scores: expected a C-contiguous"):
        xentkit.sigmoid_cross_entropy_loss(f((4, 3), strides=(4, 16)), f((4, 3)))
    with pytest.raises(ValueError, match=r"^labels: expected shape \(4,\)"):
        xentkit.sparse_softmax_cross_entropy_with_logits(f((4, 3), "<i8"), f((4, 3)))
    with pytest.raises(ValueError, match=r"^ignore_index: expected a negative"):
        xentkit.cross_entropy(f((4, 3)), f((4, 3)), ignore_index=0)
    with pytest.raises(ValueError, match=r"^reduction: "):
        xentkit.nll_loss(f((4, 3)), f((4,), "<i8"), reduction="avg")


def test_output_arrays_are_checked():
    f = FakeCAI
    x = f((4, 3), ptr=0x10000)
    with pytest.raises(ValueError, match=r"^grad: expected shape \(4, 3\)"):
        xentkit.cross_entropy(x, f((4,), "<i8", ptr=0x90000), grad=f((3, 4), ptr=0xB0000))
    with pytest.raises(ValueError, match=r"^grad: expected a writable"):
        xentkit.cross_entropy(x, f((4,), "<i8", ptr=0x90000),
                              grad=f((4, 3), ptr=0xB0000, readonly=True))
    with pytest.raises(ValueError, match=r"^grad: expected an array that does not overlap"):
        xentkit.cross_entropy(x, f((4,), "<i8", ptr=0x90000), grad=f((4, 3), ptr=0x10004))
    with pytest.raises(TypeError, match=r"^grad: expected True, False or a CUDA device array"):
        xentkit.cross_entropy(x, f((4,), "<i8", ptr=0x90000), grad=np.zeros((4, 3), "f4"))
    # the input itself is allowed (in place): the call gets as far as the device check
    with pytest.raises(xentkit.CudaUnavailableError):
        xentkit.cross_entropy(x, f((4,), "<i8", ptr=0x90000), grad=f((4, 3), ptr=0x10000))


def test_mixing_host_and_device_arrays():
    with pytest.raises(TypeError, match=r"^target: expected a CUDA device array like input"):
        xentkit.cross_entropy(FakeCAI((4, 3)), np.zeros(4, np.int64))
    with pytest.raises(TypeError, match=r"^target: expected a host \(CPU\) array"):
        xentkit.cross_entropy(np.zeros((4, 3), np.float32), FakeCAI((4,), "<i8"))
    with pytest.raises(TypeError, match=r"^weight: expected a CUDA device array like input"):
        xentkit.nll_loss(FakeCAI((4, 3)), FakeCAI((4,), "<i8"), weight=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"^labels: expected a host \(CPU\) array"):
        xentkit.sigmoid_cross_entropy_with_logits(FakeCAI((4,)), np.zeros(4, np.float32))


def test_different_devices_are_refused():
    x = FakeDLPack((4, 3), device=(2, 0))
    t = FakeDLPack((4,), code=0, bits=64, device=(2, 1))
    with pytest.raises(ValueError, match=r"^target: on CUDA device 1, but input is on device 0"):
        xentkit.cross_entropy(x, t)


def test_host_calls_accept_and_ignore_stream():
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    t = np.array([0, 1, 2, 3, 0])
    assert xentkit.cross_entropy(x, t, stream=7) == xentkit.cross_entropy(x, t)
    np.testing.assert_array_equal(xentkit.log_softmax(x, stream=None), xentkit.log_softmax(x))


def test_device_array_cannot_be_built_directly():
    with pytest.raises(TypeError):
        xentkit.DeviceArray()


# ---- the call's stream and lifetime rules, on a fake device ---------------------------------
# _device talks to the device through _core alone: replaced here by a recorder, the rules of
# python/xentkit/_device.py run without a GPU (the gpu-marked tests in test_cuda_gpu.py prove
# them on one).

class FakeArray:
    """What _core.device_empty / device_workspace return."""

    def __init__(self, ptr, shape=(), dtype="float32", device=0, stream=0):
        self.ptr, self.shape, self.dtype = ptr, shape, dtype
        self.device, self.stream = device, stream


class FakeCore:
    def __init__(self, current=0):
        self.current = current
        self.log = []
        self.events = {}
        self.next_ptr = 0x700000
        self.fail_workspace = False

    def cuda_built(self):
        return True

    def cuda_device_count(self):
        return 2

    def device_kernel_problem(self):
        return ""

    def device_of(self, ptr):
        return 1 if ptr >= 0x5000000 else 0

    def device_current(self):
        return self.current

    def device_set(self, device):
        self.log.append(("set", device))
        self.current = device

    def device_stream_wait(self, waiter, producer):
        self.log.append(("wait", waiter, producer))

    def device_synchronize(self, stream):
        self.log.append(("sync", stream))

    def device_on(self, device, fn, *args):
        previous = self.current
        self.current = device
        self.log.append(("on", device))
        try:
            return fn(*args)
        finally:
            self.current = previous

    def device_workspace(self, device, stream, reduced_dtype):
        if self.fail_workspace:
            raise MemoryError("out of device memory")
        self.next_ptr += 0x10000
        return self.next_ptr, FakeArray(self.next_ptr + 32768, (), reduced_dtype, device, stream)

    def device_empty(self, shape, dtype, device, stream):
        self.next_ptr += 0x10000
        return FakeArray(self.next_ptr, shape, dtype, device, stream)

    def device_check(self, ws, stream):
        self.log.append(("check", stream))

    def device_record_event(self, stream):
        event = len(self.events) + 1
        self.events[event] = False
        self.log.append(("record", stream, self.current))
        return event

    def device_event_done(self, event):
        return self.events[event]

    def device_destroy_event(self, event):
        self.log.append(("destroy", event))

    def __getattr__(self, name):
        if not name.startswith("device_"):
            raise AttributeError(name)

        def entry(*args):
            self.log.append(("run", name, args[-1]))

        return entry

    def waits(self):
        return [e[1:] for e in self.log if e[0] == "wait"]


class TorchLikeCAI(FakeCAI):
    """A torch float tensor as seen through CAI v2: no declared stream."""

    def __init__(self, shape, ptr, typestr="<f4", index=0):
        super().__init__(shape, typestr, ptr=ptr, version=2)
        self.device = type("Dev", (), {"index": index})()


TorchLikeCAI.__module__ = "torch.fake"


class TorchLikeDLPack(FakeDLPack):
    """A torch bfloat16 tensor: DLPack only."""


TorchLikeDLPack.__module__ = "torch.fake"


@pytest.fixture
def fake_device(monkeypatch):
    core = FakeCore()
    monkeypatch.setattr(_device, "_core", core)
    monkeypatch.setattr(_device, "_KEEP", _device.Keeper())
    monkeypatch.setattr(_device, "convert", lambda arr, kind: arr)
    streams = {}  # (library, device) -> the library's current stream
    monkeypatch.setattr(_device, "library_stream",
                        lambda obj, device=None: streams.get(
                            (_device.library_of(obj), device if device is not None else 0)))
    core.streams = streams
    return core


def test_explicit_stream_waits_for_torch_float_inputs_and_outputs(fake_device):
    """1.2: a float32 torch tensor (CAI v2, no stream) on an explicit stream: the call waits for
    torch's stream before, and torch's stream waits for the call after a caller-given grad."""
    fake_device.streams[("torch", 0)] = 0x55
    x = TorchLikeCAI((4, 3), 0x10000)
    t = TorchLikeCAI((4,), 0x20000, "<i8")
    g = TorchLikeCAI((4, 3), 0x30000)
    _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=g, stream=0x99,
                          sync=False)
    log = fake_device.log
    runs = [i for i, e in enumerate(log) if e[0] == "run"]
    assert len(runs) == 1 and log[runs[0]][2] == 0x99
    before = [e[1:] for e in log[:runs[0]] if e[0] == "wait"]
    after = [e[1:] for e in log[runs[0]:] if e[0] == "wait"]
    assert before == [(0x99, 0x55)]  # once, for all three
    assert after == [(0x55, 0x99)]   # the caller's grad, read next on torch's stream


def test_default_torch_stream_needs_no_wait(fake_device):
    fake_device.streams[("torch", 0)] = 0x55
    x = TorchLikeCAI((4, 3), 0x10000)
    t = TorchLikeCAI((4,), 0x20000, "<i8")
    _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=True, stream=None,
                          sync=False)
    assert fake_device.waits() == []
    assert [e[2] for e in fake_device.log if e[0] == "run"] == [0x55]


def test_bfloat16_and_float32_take_the_same_handshake(fake_device):
    """1.2: the DLPack producer is handed the call's stream (it orders itself: no extra wait),
    the CAI one is waited for: either way the call runs after the producer."""
    fake_device.streams[("torch", 0)] = 0x55
    x = TorchLikeDLPack((4, 3), code=4, bits=16)
    t = TorchLikeCAI((4,), 0x90000, "<i8")
    _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=False, stream=0x99,
                          sync=False)
    assert x.streams == [0x99]
    assert fake_device.waits() == [(0x99, 0x55)]  # the float labels, via CAI


def test_dlpack_without_a_stream_keyword_is_waited_for(fake_device):
    """1.8: a producer whose __dlpack__ takes no stream is asked without one, and its library's
    stream is then waited for; a TypeError for another reason is raised, not retried."""

    class NoStream(FakeDLPack):
        def __dlpack__(self):
            return FakeDLPack.__dlpack__(self, None)

    NoStream.__module__ = "torch.fake"
    fake_device.streams[("torch", 0)] = 0x55
    x = NoStream((4, 3))
    a = _device.parse(x, "input", 0x99)
    assert a.handshake is False and x.streams == [None]
    assert _device.producer_stream(a) == 0x55
    a.close()

    class Broken(FakeDLPack):
        def __dlpack__(self, stream=None):
            raise TypeError("bad stream type inside the producer")

    with pytest.raises(TypeError, match="inside the producer"):
        _device.parse(Broken((4, 3)), "input", 0x99)


def test_arguments_live_until_the_calls_work_is_done(fake_device):
    """1.3: the DLPack tensors are handed back (deleter) only once the event recorded after the
    kernels has completed, not when the entry point returns."""
    x = FakeDLPack((4, 3))
    t = FakeDLPack((4,), code=0, bits=64, data=0x90000)
    _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=True, stream=0x99,
                          sync=False)
    import gc

    gc.collect()
    assert x.deleted == 0 and t.deleted == 0
    records = [e for e in fake_device.log if e[0] == "record"]
    assert records == [("record", 0x99, 0)]  # on the call's stream, its device current
    assert len(_device._KEEP.pending) == 1
    _device._KEEP.prune()
    assert x.deleted == 0  # still running
    fake_device.events[1] = True
    _device._KEEP.prune()
    gc.collect()
    assert x.deleted == 1 and t.deleted == 1
    assert ("destroy", 1) in fake_device.log and _device._KEEP.pending == []


def test_keeper_prunes_completed_calls_on_the_next_hold():
    done = {}
    destroyed = []
    keeper = _device.Keeper(record=lambda s: (done.setdefault(len(done) + 1, False), len(done))[1],
                            done=lambda e: done[e], destroy=destroyed.append)
    objs = [object() for _ in range(3)]
    for o in objs:
        keeper.hold(0x1, [o])
    assert len(keeper.pending) == 3
    done[2] = True
    keeper.hold(0x1, ["next"])
    assert [k[1] for k in keeper.pending] == [[objs[0]], [objs[2]], ["next"]]
    assert destroyed == [2]


def test_a_failure_after_the_device_switch_restores_it(fake_device):
    """1.18: the caller's device is current again after a failure between start() and the entry
    point (here the workspace allocation), and the DLPack tensors go back at once."""
    fake_device.current = 0
    fake_device.fail_workspace = True
    x = FakeDLPack((4, 3), device=(2, 1), data=0x5000000)
    t = FakeDLPack((4,), code=0, bits=64, device=(2, 1), data=0x5100000)
    with pytest.raises(MemoryError):
        _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=True, stream=0x99,
                              sync=False)
    assert ("set", 1) in fake_device.log
    assert fake_device.current == 0
    assert x.deleted == 1 and t.deleted == 1


def test_a_failing_entry_point_restores_the_device_and_keeps_the_arguments(fake_device):
    def boom(*args):
        raise ValueError("launch refused")

    fake_device.device_cross_entropy_indices = boom
    x = FakeDLPack((4, 3), device=(2, 1), data=0x5000000)
    t = FakeDLPack((4,), code=0, bits=64, device=(2, 1), data=0x5100000)
    with pytest.raises(ValueError, match="launch refused"):
        _device.cross_entropy(x, t, None, ignore=-100, red=1, eps=0.0, grad=True, stream=0x99,
                              sync=False)
    assert fake_device.current == 0
    assert x.deleted == 0 and len(_device._KEEP.pending) == 1  # enqueued work may read them


def test_cupy_stream_is_asked_on_the_arrays_device(monkeypatch):
    """1.6: CuPy's current stream is per device: it is asked with the array's device current."""
    import sys
    import types

    asked = []
    current = {"dev": 0}
    per_device = {0: 0xD0, 1: 0xD1}

    class Device:
        def __init__(self, dev):
            self.dev = dev

        def __enter__(self):
            self.prev, current["dev"] = current["dev"], self.dev

        def __exit__(self, *exc):
            current["dev"] = self.prev

    def get_current_stream():
        asked.append(current["dev"])
        return types.SimpleNamespace(ptr=per_device[current["dev"]])

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(Device=Device, get_current_stream=get_current_stream)
    monkeypatch.setitem(sys.modules, "cupy", cupy)

    class CupyArray:
        device = types.SimpleNamespace(id=1)

    CupyArray.__module__ = "cupy._core"
    assert _device.library_stream(CupyArray()) == 0xD1
    assert asked == [1] and current["dev"] == 0


def test_numba_and_old_jax_results_are_ordered_on_the_arrays_device(monkeypatch):
    """1.5, 1.9: Numba's legacy stream waits for the call on the result's device; an older JAX
    whose from_dlpack takes only a capsule gets the result after a wait for the call's stream."""
    import sys
    import types

    core = FakeCore(current=0)
    monkeypatch.setattr(_device, "_core", core)
    numba = types.ModuleType("numba")
    numba.cuda = types.SimpleNamespace(as_cuda_array=lambda arr, sync: ("numba", arr))
    monkeypatch.setitem(sys.modules, "numba", numba)
    arr = FakeArray(0x5000000, (3,), device=1, stream=0x99)
    assert _device.convert(arr, "numba") == ("numba", arr)
    assert ("on", 1) in core.log and ("wait", 0, 0x99) in core.log
    assert core.current == 0

    class OldJaxArray(FakeArray):
        def __dlpack__(self):
            return "capsule"

    def from_dlpack(obj):
        if not isinstance(obj, str):
            raise TypeError("expected a capsule")
        return ("jax", obj)

    jax = types.ModuleType("jax")
    jax.dlpack = types.SimpleNamespace(from_dlpack=from_dlpack)
    monkeypatch.setitem(sys.modules, "jax", jax)
    core.log.clear()
    assert _device.convert(OldJaxArray(0x5000000, (3,), device=1, stream=0x99), "jax") == \
        ("jax", "capsule")
    assert core.log == [("on", 1), ("sync", 0x99)]


def test_dlpack_export_refuses_the_ambiguous_stream_0():
    """1.19: 0 is not a CUDA stream in the DLPack protocol (1 is the legacy one)."""
    with pytest.raises(BufferError, match="stream: 0 is ambiguous"):
        xentkit._core._consumer_stream(0)
    assert xentkit._core._consumer_stream(1) == 0
    assert xentkit._core._consumer_stream(None) == 0
    assert xentkit._core._consumer_stream(-1) == -1
    assert xentkit._core._consumer_stream(0x77) == 0x77


def test_layers_import_one_way():
    """_arrays (host arrays) and _foreign (device array parsing) never import _device; _device
    imports both."""
    import ast
    import pathlib

    root = pathlib.Path(xentkit.__file__).parent
    for name in ("_arrays.py", "_foreign.py"):
        tree = ast.parse((root / name).read_text())
        imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any("_device" in m for m in imported), (name, imported)
