"""Foreign device arrays: recognising them and reading what they describe, without running
anything.

A device array argument arrives through ``__cuda_array_interface__`` (versions 2 and 3: byte
strides, an optional declared stream) or DLPack (``__dlpack__`` / ``__dlpack_device__``: element
strides, a capsule whose producer is given the consumer's stream). Either way it becomes a
``DeviceInput``: pointer, shape, dtype, device, the stream the producer declared (if any) and
whether the producer was handed the call's stream (the DLPack handshake). Which stream a call
runs on, what waits for what and how long buffers are kept alive are decided in ``_device.py``.
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import Any, Optional

from numpy import ndarray as _ndarray

from . import _core


def describe(obj):
    """The qualified type name of `obj`, for messages."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


KDL_CPU = 1
KDL_CUDA = 2
KDL_CUDA_HOST = 3
KDL_CUDA_MANAGED = 13

# Element type codes shared with src/xentkit/device_bridge.hpp.
VALUE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
INDEX_CODES = {"int8": 10, "int16": 11, "int32": 12, "int64": 13,
               "uint8": 14, "uint16": 15, "uint32": 16, "uint64": 17}
LABEL_CODES = dict(INDEX_CODES, float32=2, float64=3)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2,
            "int32": 4, "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
            "bool": 1}

_TYPESTR = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16",
            "i4": "int32", "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32",
            "u8": "uint64", "b1": "bool"}
_DL_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 6: "bool"}

_LIBRARIES = {"torch": "torch", "cupy": "cupy", "cupyx": "cupy", "jax": "jax", "jaxlib": "jax",
              "numba": "numba"}


def library_of(obj) -> Optional[str]:
    """"torch", "cupy", "jax" or "numba" for an array of that library, else None."""
    return _LIBRARIES.get(type(obj).__module__.split(".")[0])


def _dlpack_device(obj):
    fn = getattr(type(obj), "__dlpack_device__", None)
    if fn is None:
        return None
    try:
        dev = obj.__dlpack_device__()
        return int(dev[0]), int(dev[1])
    except Exception:
        return None


def _cai(obj):
    """The object's __cuda_array_interface__ dict, or None (absent, or refused: a CPU tensor, a
    dtype the producer cannot describe)."""
    try:
        cai = getattr(obj, "__cuda_array_interface__")
    except Exception:
        return None
    return cai if isinstance(cai, dict) else None


def is_device_array(obj) -> bool:
    """True for an array in CUDA device (or managed) memory: DLPack device type kDLCUDA or
    kDLCUDAManaged, or a ``__cuda_array_interface__`` on an object that is not a host array."""
    if type(obj) is _ndarray or obj is None or isinstance(
            obj, (int, float, complex, str, bytes, bool, list, tuple, _ndarray)):
        return False
    if isinstance(obj, _core.DeviceArray):
        return True
    dev = _dlpack_device(obj)
    if dev is not None:
        return dev[0] in (KDL_CUDA, KDL_CUDA_MANAGED)
    if hasattr(obj, "__array_interface__"):
        return False
    return _cai(obj) is not None


# ---- stream arguments ---------------------------------------------------------------------------

def _normal(handle: int) -> int:
    """A stream handle with the legacy default stream as 0 (CAI/DLPack spell it 1)."""
    return 0 if handle == 1 else handle


def stream_handle(stream, name="stream") -> int:
    """An explicit stream argument as a handle: an int, or an object with ``__cuda_stream__``
    (returning (version, handle)), ``.cuda_stream`` (torch.cuda.Stream), ``.ptr``
    (cupy.cuda.Stream) or ``.handle`` (numba; a ctypes pointer). 0 and 1 are the legacy default
    stream, 2 the per-thread default stream."""
    if isinstance(stream, bool):
        raise TypeError(f"{name}: expected a CUDA stream or an integer handle, got {stream!r}")
    value: Any = None
    if hasattr(stream, "__cuda_stream__"):
        proto = stream.__cuda_stream__
        proto = proto() if callable(proto) else proto
        value = proto[1] if isinstance(proto, tuple) else proto
    elif hasattr(stream, "cuda_stream"):
        value = stream.cuda_stream
    elif hasattr(stream, "ptr") and not isinstance(stream, int):
        value = stream.ptr
    elif hasattr(stream, "handle") and not isinstance(stream, int):
        value = getattr(stream.handle, "value", stream.handle)
        value = 0 if value is None else value
    else:
        value = stream
    try:
        handle = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name}: expected a CUDA stream (an integer handle, or an object with .ptr, "
            f".cuda_stream or __cuda_stream__), got {describe(stream)}") from None
    if handle < 0 or handle >= 2**64:
        raise ValueError(f"{name}: expected a stream handle >= 0, got {handle}")
    return _normal(handle)


# ---- parsing ----------------------------------------------------------------------------------

class DeviceInput:
    """A device array argument, read in place.

    ``stream`` is the stream its ``__cuda_array_interface__`` declares (None: none declared);
    ``handshake`` is True when a DLPack producer was given the call's stream (it then ordered its
    pending work before that stream itself); ``holder`` keeps a DLPack tensor until release().
    """

    __slots__ = ("name", "obj", "ptr", "shape", "dtype", "device", "stream", "readonly",
                 "holder", "via", "handshake")

    def __init__(self, name, obj, ptr, shape, dtype, device=None, stream=None, readonly=False,
                 holder=None, via="cai", handshake=False):
        self.name = name
        self.obj = obj
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.device = device
        self.stream = stream
        self.readonly = readonly
        self.holder = holder
        self.via = via
        self.handshake = handshake

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.size * ITEMSIZE[self.dtype]

    @property
    def library(self):
        return library_of(self.obj)

    def close(self):
        """Hands a DLPack tensor back to its producer now (its deleter runs). Only for a tensor
        no enqueued work reads: a call's tensors are kept by _device until its work is done."""
        if self.holder is not None:
            self.holder.close()
            self.holder = None

    def __repr__(self):
        return (f"DeviceInput({self.name}: {self.dtype}{list(self.shape)} at {self.ptr:#x}, "
                f"device={self.device}, stream={self.stream}, via={self.via})")


def _check_contiguous(name, shape, strides, itemsize, unit):
    """ValueError unless `strides` (None = C-contiguous) describe a C-contiguous layout."""
    if strides is None or math.prod(shape) == 0:
        return
    if len(strides) != len(shape):
        raise ValueError(f"{name}: strides {tuple(strides)} do not match shape {tuple(shape)}")
    expected = itemsize if unit == "bytes" else 1
    for dim, step in zip(reversed(shape), reversed(strides)):
        if dim != 1 and step != expected:
            raise ValueError(
                f"{name}: expected a C-contiguous device array, got shape {tuple(shape)} with "
                f"strides {tuple(strides)} ({unit}); device arrays are read in place, never "
                "copied: make it contiguous first (e.g. .contiguous(), cupy.ascontiguousarray)")
        expected *= dim


def _bfloat16_hint(obj) -> bool:
    dt = getattr(obj, "dtype", None)
    return dt is not None and "bfloat16" in str(dt)


def parse_cai(obj, name, cai=None) -> Optional[DeviceInput]:
    """A DeviceInput from a __cuda_array_interface__ (v2 or v3), or None when its typestr names
    no type xentkit knows (a '<V2' that may be bfloat16: DLPack says which)."""
    cai = _cai(obj) if cai is None else cai
    if not isinstance(cai, dict):
        raise TypeError(f"{name}: __cuda_array_interface__ is not a dict")
    try:
        shape = tuple(int(d) for d in cai["shape"])
        typestr = str(cai["typestr"])
        ptr, readonly = cai["data"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{name}: malformed __cuda_array_interface__ {cai!r}") from None
    if cai.get("mask") is not None:
        raise ValueError(f"{name}: masked device arrays are not supported")
    version = int(cai.get("version", 2))
    if len(typestr) < 3 or typestr[0] not in "<>|=":
        raise TypeError(f"{name}: unknown typestr {typestr!r}")
    if typestr[0] == ">" and typestr[2:] != "1":
        raise TypeError(f"{name}: expected a little-endian device array, got typestr {typestr!r}")
    dtype = _TYPESTR.get(typestr[1:])
    if dtype is None:
        if typestr[1:] == "V2" and _bfloat16_hint(obj):
            dtype = "bfloat16"
        elif hasattr(obj, "__dlpack__"):
            return None
        else:
            raise TypeError(
                f"{name}: typestr {typestr!r} of __cuda_array_interface__ names no supported "
                "dtype (float16, bfloat16, float32, float64 or integers; a bfloat16 array needs "
                "DLPack or a dtype attribute saying bfloat16)")
    itemsize = ITEMSIZE[dtype]
    if int(typestr[2:]) != itemsize:
        raise TypeError(f"{name}: typestr {typestr!r} does not match its dtype {dtype}")
    _check_contiguous(name, shape, cai.get("strides"), itemsize, "bytes")
    stream = cai.get("stream") if version >= 3 else None
    if stream is not None:
        if isinstance(stream, bool) or not isinstance(stream, int):
            raise ValueError(f"{name}: __cuda_array_interface__ stream must be an integer or None, "
                             f"got {stream!r}")
        if stream == 0:
            raise ValueError(f"{name}: __cuda_array_interface__ stream 0 is disallowed "
                             "(version 3: 1 is the legacy default stream)")
        stream = _normal(stream)
    device = None
    if library_of(obj) == "torch":
        device = obj.device.index
    elif library_of(obj) == "cupy":
        device = int(obj.device.id)
    return DeviceInput(name, obj, ptr or 0, shape, dtype, device=device, stream=stream,
                       readonly=bool(readonly), via="cai")


def _dl_dtype(name, code, bits, lanes):
    if lanes != 1:
        raise TypeError(f"{name}: vector DLPack dtypes (lanes {lanes}) are not supported")
    kind = _DL_CODES.get(code)
    if kind == "bfloat" and bits == 16:
        return "bfloat16"
    if kind == "bool" and bits == 8:
        return "bool"
    if kind in ("int", "uint", "float"):
        dtype = f"{kind}{bits}"
        if dtype in ITEMSIZE:
            return dtype
    raise TypeError(f"{name}: unsupported DLPack dtype (code {code}, {bits} bits)")


def _takes_stream(fn) -> Optional[bool]:
    """Whether a ``__dlpack__`` method accepts a ``stream`` keyword (None: cannot tell)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if "stream" in params:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or False


def _stream_keyword_refused(err: TypeError) -> bool:
    text = str(err)
    return "stream" in text and ("keyword" in text or "argument" in text)


def parse_dlpack(obj, name, stream: int) -> DeviceInput:
    """A DeviceInput from ``__dlpack__(stream=...)``: the producer orders its pending work before
    `stream` (``handshake`` True); the tensor is held until it is released.

    A producer whose ``__dlpack__`` takes no ``stream`` is asked without one (``handshake``
    False: the call side then orders the call after the producer's stream itself). Any other
    TypeError from the producer is raised, never retried without the stream."""
    handle = 1 if stream == 0 else stream  # DLPack: 1 is the legacy default stream, 0 invalid
    takes = _takes_stream(obj.__dlpack__)
    handshake = takes is not False
    if handshake:
        try:
            capsule = obj.__dlpack__(stream=handle)
        except TypeError as err:
            if takes is True or not _stream_keyword_refused(err):
                raise
            handshake = False
    if not handshake:
        capsule = obj.__dlpack__()
    holder, desc = _core.dlpack_import(capsule)
    try:
        if desc["device_type"] not in (KDL_CUDA, KDL_CUDA_MANAGED):
            raise TypeError(f"{name}: expected a CUDA device array, got DLPack device type "
                            f"{desc['device_type']}")
        dtype = _dl_dtype(name, desc["code"], desc["bits"], desc["lanes"])
        _check_contiguous(name, desc["shape"], desc["strides"], ITEMSIZE[dtype], "elements")
    except BaseException:
        holder.close()
        raise
    return DeviceInput(name, obj, desc["data"], desc["shape"], dtype, device=desc["device_id"],
                       stream=None, readonly=False, holder=holder, via="dlpack",
                       handshake=handshake)


def _prepare(obj):
    if library_of(obj) == "torch" and getattr(obj, "requires_grad", False):
        return obj.detach()  # outputs are plain arrays: no autograd graph through xentkit
    return obj


def parse(obj, name, stream: int) -> DeviceInput:
    """A device array argument: ``__cuda_array_interface__`` first (JAX arrays: DLPack), else
    DLPack. TypeError for anything that is not a CUDA device array."""
    if isinstance(obj, DeviceInput):
        return obj
    if not is_device_array(obj):
        raise TypeError(f"{name}: expected a CUDA device array, got a host array or "
                        f"{describe(obj)} (device and host arrays cannot be mixed in one call)")
    obj = _prepare(obj)
    if library_of(obj) != "jax":
        cai = _cai(obj)
        if cai is not None:
            parsed = parse_cai(obj, name, cai)
            if parsed is not None:
                return parsed
    if hasattr(obj, "__dlpack__"):
        return parse_dlpack(obj, name, stream)
    raise TypeError(f"{name}: {describe(obj)} offers neither a usable __cuda_array_interface__ "
                    "nor __dlpack__")


