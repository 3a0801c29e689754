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
