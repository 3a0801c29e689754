"""CUDA device arrays: recognising them (``__cuda_array_interface__`` or DLPack), choosing the
stream, running the device kernels and giving the results back as the caller's kind of array.

Rules (see the README section "CUDA"):

* Device arrays are read in place, never copied: they must be C-contiguous, of one device, and of
  the dtypes the kernels read (float16, bfloat16, float32, float64 values; integer labels).
* Stream: an explicit ``stream=`` (an integer handle, or an object with ``.ptr`` (CuPy),
  ``.cuda_stream`` (PyTorch) or ``__cuda_stream__``), else the producing library's current
  stream (PyTorch, CuPy), else the stream an input's ``__cuda_array_interface__`` declares, else
  the legacy default stream (0). Inputs declared on another stream are waited for on the device.
* Outputs are new device arrays (or the caller's own output array), returned as the main input's
  kind: torch.Tensor, cupy.ndarray, jax.Array, numba DeviceNDArray, else xentkit's DeviceArray.
  The reduced loss is a 0-d device array: no call waits for the device.
* Errors only the device sees (bad labels, probabilities outside [0, 1]) make the outputs NaN;
  ``sync=True`` waits for the stream and raises them as the CPU functions do.
"""

from __future__ import annotations

import math
import operator
from typing import Any, List, Optional, Sequence

from numpy import ndarray as _ndarray

from . import _core
from ._arrays import _describe
from ._errors import CudaUnavailableError

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


# ---- streams ----------------------------------------------------------------------------------

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
            f".cuda_stream or __cuda_stream__), got {_describe(stream)}") from None
    if handle < 0 or handle >= 2**64:
        raise ValueError(f"{name}: expected a stream handle >= 0, got {handle}")
    return _normal(handle)


def library_stream(obj, device: Optional[int] = None) -> Optional[int]:
    """The current stream of the library that made `obj` (PyTorch, CuPy), or None when it has
    none to offer (JAX, Numba, others)."""
    lib = library_of(obj)
    if lib == "torch":
        import torch

        dev = obj.device if device is None else torch.device("cuda", device)
        return _normal(int(torch.cuda.current_stream(dev).cuda_stream))
    if lib == "cupy":
        import cupy

        return _normal(int(cupy.cuda.get_current_stream().ptr))
    return None


def resolve_stream(explicit=None, library: Optional[int] = None,
                   declared: Optional[int] = None) -> int:
    """The stream a call runs on: the explicit argument, else the library's current stream, else
    the stream the main input declares (CAI v3), else the legacy default stream (0)."""
    if explicit is not None:
        return stream_handle(explicit)
    if library is not None:
        return _normal(int(library))
    if declared is not None:
        return _normal(int(declared))
    return 0


# ---- parsing ----------------------------------------------------------------------------------

class DeviceInput:
    """A device array argument, read in place."""

    __slots__ = ("name", "obj", "ptr", "shape", "dtype", "device", "stream", "readonly",
                 "holder", "via")

    def __init__(self, name, obj, ptr, shape, dtype, device=None, stream=None, readonly=False,
                 holder=None, via="cai"):
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

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.size * ITEMSIZE[self.dtype]

    def close(self):
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


def parse_dlpack(obj, name, stream: int) -> DeviceInput:
    """A DeviceInput from ``__dlpack__(stream=...)``: the producer orders its pending work before
    `stream`; the tensor is held until close()."""
    handle = 1 if stream == 0 else stream  # DLPack: 1 is the legacy default stream, 0 invalid
    try:
        capsule = obj.__dlpack__(stream=handle)
    except TypeError:
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
                       stream=None, readonly=False, holder=holder, via="dlpack")


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
                        f"{_describe(obj)} (device and host arrays cannot be mixed in one call)")
    obj = _prepare(obj)
    if library_of(obj) != "jax":
        cai = _cai(obj)
        if cai is not None:
            parsed = parse_cai(obj, name, cai)
            if parsed is not None:
                return parsed
    if hasattr(obj, "__dlpack__"):
        return parse_dlpack(obj, name, stream)
    raise TypeError(f"{name}: {_describe(obj)} offers neither a usable __cuda_array_interface__ "
                    "nor __dlpack__")


# ---- availability -----------------------------------------------------------------------------

def require_cuda(arg: DeviceInput):
    """CudaUnavailableError naming the argument, unless this build has the CUDA kernels and a
    device is usable."""
    if not _core.cuda_built():
        raise CudaUnavailableError(
            f"{arg.name}: a CUDA device array ({_describe(arg.obj)}), but this build of xentkit "
            "has no CUDA kernels (built with XENTKIT_USE_CUDA=OFF); pass host arrays or install "
            "a CUDA build")
    if _core.cuda_device_count() <= 0:
        raise CudaUnavailableError(
            f"{arg.name}: a CUDA device array ({_describe(arg.obj)}), but no usable CUDA device "
            "was found (no driver, or no device visible to this process)")


# ---- checks shared by the losses ----------------------------------------------------------------

def value_dtype(arg: DeviceInput):
    if arg.dtype not in VALUE_CODES:
        raise TypeError(f"{arg.name}: expected dtype float16, bfloat16, float32 or float64, got "
                        f"{arg.dtype}")
    return arg.dtype


def same_dtype(arg: DeviceInput, main: DeviceInput):
    if arg.dtype != main.dtype:
        raise TypeError(
            f"{arg.name}: expected dtype {main.dtype} (that of {main.name}) for device arrays, "
            f"got {arg.dtype} (device arrays are not converted: cast it first)")


def index_dtype(arg: DeviceInput):
    if arg.dtype not in INDEX_CODES:
        raise TypeError(f"{arg.name}: expected class indices of an integer dtype, got {arg.dtype}")
    return INDEX_CODES[arg.dtype]


def label_dtype(arg: DeviceInput):
    if arg.dtype not in LABEL_CODES:
        raise TypeError(f"{arg.name}: expected an integer, float32 or float64 dtype for device "
                        f"labels, got {arg.dtype}")
    return LABEL_CODES[arg.dtype]


def broadcast(w: Optional[DeviceInput], shape):
    """(pointer, stride, period) of an element weight read in place, as the host path's
    _broadcast but without expanding: its non-1 dimensions must be one run of the shape's."""
    if w is None:
        return 0, 1, 1
    padded = (1,) * (len(shape) - w.ndim) + w.shape
    if w.ndim > len(shape) or any(a != 1 and a != b for a, b in zip(padded, shape)):
        raise ValueError(f"{w.name}: expected a shape that broadcasts to the input's "
                         f"{tuple(shape)} without enlarging it, got {w.shape}")
    if math.prod(shape) == 0:
        return 0, 1, 1
    dims = [d for d, n in enumerate(padded) if n != 1]
    if not dims:
        return w.ptr, 1, 1
    a, b = dims[0], dims[-1]
    if not all(padded[d] == shape[d] for d in range(a, b + 1)):
        raise ValueError(
            f"{w.name}: a device weight of shape {w.shape} against {tuple(shape)} is not one run "
            "of the input's dimensions; broadcast it to the input's shape first (device arrays "
            "are not expanded)")
    return w.ptr, math.prod(shape[b + 1:]), math.prod(shape[a:b + 1])


class Call:
    """One device call: its arguments, stream, device and outputs.

    Usage: ``call = Call(main_obj, main_name, stream, sync)``, ``call.arg(obj, name)`` for the
    other device arrays, checks, then ``call.start()``, ``call.output(...)``/``call.workspace``,
    the entry point, ``call.finish()`` and ``call.result(arr)`` for each returned array.
    """

    def __init__(self, main_obj, main_name, stream, sync):
        if not isinstance(sync, bool):
            raise TypeError(f"sync: expected True or False, got {sync!r}")
        self.sync = sync
        self.args: List[DeviceInput] = []
        explicit = None if stream is None else stream_handle(stream)
        lib = library_of(main_obj)
        lib_stream = None
        if explicit is None:
            lib_stream = library_stream(main_obj)
        first = explicit if explicit is not None else lib_stream
        self.main = parse(main_obj, main_name, 0 if first is None else first)
        self.args.append(self.main)
        self.kind = lib
        self.stream = resolve_stream(explicit, lib_stream, self.main.stream)
        self.device = self.main.device
        self.ws = 0
        self._owners: List[Any] = []
        self._previous = None

    def arg(self, obj, name) -> Optional[DeviceInput]:
        if obj is None:
            return None
        if not is_device_array(obj):
            raise TypeError(
                f"{name}: expected a CUDA device array like {self.main.name}, got a host array "
                f"({_describe(obj)}); device and host arrays cannot be mixed in one call")
        a = parse(obj, name, self.stream)
        self.args.append(a)
        if a.device is not None and self.device is not None and a.device != self.device:
            raise ValueError(f"{name}: on CUDA device {a.device}, but {self.main.name} is on "
                             f"device {self.device}; all arrays of a call must be on one device")
        return a

    def want(self, value, name, shape, dtype, inputs=()):
        """Checks an output argument before anything runs: None (not wanted), True (a new array,
        allocated by alloc() after start()), or the caller's device array (shape, dtype,
        writable, C-contiguous, no overlap with the inputs except being the first of them
        exactly), as a DeviceInput."""
        if value is False or value is None:
            return None
        if value is True:
            return (tuple(shape), dtype)
        if not is_device_array(value):
            raise TypeError(f"{name}: expected True, False or a CUDA device array, got "
                            f"{_describe(value)}")
        out = parse(value, name, self.stream)
        try:
            if out.shape != tuple(shape):
                raise ValueError(f"{name}: expected shape {tuple(shape)}, got {out.shape}")
            if out.dtype != dtype:
                raise ValueError(f"{name}: expected dtype {dtype}, got {out.dtype}")
            if out.readonly:
                raise ValueError(f"{name}: expected a writable array, got a read-only one")
            for i, a in enumerate(inputs):
                if a is None or out.nbytes == 0 or a.nbytes == 0:
                    continue
                if i == 0 and a.ptr == out.ptr and a.nbytes == out.nbytes:
                    continue
                if out.ptr < a.ptr + a.nbytes and a.ptr < out.ptr + out.nbytes:
                    raise ValueError(
                        f"{name}: expected an array that does not overlap the inputs (only "
                        f"{inputs[0].name} itself may be passed, for an in-place result)")
            if out.device is not None and self.device is not None and out.device != self.device:
                raise ValueError(f"{name}: on CUDA device {out.device}, but {self.main.name} is "
                                 f"on device {self.device}")
        except BaseException:
            out.close()
            raise
        self.args.append(out)
        return out

    def alloc(self, spec):
        """The array an output writes: a new DeviceArray for a (shape, dtype) from want(), the
        caller's array itself, or None."""
        if spec is None or isinstance(spec, DeviceInput):
            return spec
        shape, dtype = spec
        return _core.device_empty(shape, dtype, self.device, self.stream)

    def start(self):
        """Checks availability and the devices, makes the input's device current, makes the
        call's stream wait for the streams the inputs declare and allocates the workspace."""
        require_cuda(self.main)
        devices = {}
        for a in self.args:
            if a.device is None:
                a.device = _core.device_of(a.ptr) if a.nbytes else None
            if a.device is not None and a.device >= 0:
                devices.setdefault(a.device, a)
            elif a.nbytes:
                raise ValueError(f"{a.name}: the pointer {a.ptr:#x} is not CUDA device memory")
        if len(devices) > 1:
            first, *rest = devices.values()
            raise ValueError(f"{rest[0].name}: on CUDA device {rest[0].device}, but "
                             f"{first.name} is on device {first.device}; all arrays of a call "
                             "must be on one device")
        if self.device is None:
            self.device = next(iter(devices)) if devices else _core.device_current()
        self._previous = _core.device_current()
        if self._previous != self.device:
            _core.device_set(self.device)
        waited = set()
        for a in self.args:
            if a.stream is not None and a.stream != self.stream and a.stream not in waited:
                _core.device_stream_wait(self.stream, a.stream)
                waited.add(a.stream)

    def workspace(self, reduced_dtype=None):
        """The workspace pointer; with reduced_dtype, also the 0-d DeviceArray of the reduced
        value that shares its allocation."""
        self.ws, owner = _core.device_workspace(self.device, self.stream, reduced_dtype)
        self._owners.append(owner)
        return owner if reduced_dtype is not None else None

    def finish(self):
        """After the entry point: sync=True waits and raises what the device recorded; then the
        borrowed DLPack tensors are handed back and the previous device made current."""
        try:
            if self.sync and self.ws:
                _core.device_check(self.ws, self.stream)
        finally:
            self.close()

    def close(self):
        for a in self.args:
            a.close()
        self._owners.clear()
        if self._previous is not None and self._previous != self.device:
            _core.device_set(self._previous)
        self._previous = None

    def result(self, arr):
        """`arr` as the main input's kind of array (a caller's output array: itself)."""
        if arr is None:
            return None
        if isinstance(arr, DeviceInput):
            return arr.obj
        return convert(arr, self.kind)


def convert(arr, kind):
    """A DeviceArray as a `kind` array ("torch", "cupy", "jax", "numba"), without a copy; any
    other kind gets the DeviceArray itself."""
    if kind == "torch":
        import torch

        return torch.from_dlpack(arr)
    if kind == "cupy":
        import cupy

        return cupy.from_dlpack(arr)
    if kind == "jax":
        import jax

        try:
            return jax.dlpack.from_dlpack(arr)
        except TypeError:
            return jax.dlpack.from_dlpack(arr.__dlpack__())
    if kind == "numba":
        from numba import cuda as numba_cuda

        if arr.stream != 0:  # Numba's default stream is the legacy one: order it after ours
            _core.device_stream_wait(0, arr.stream)
        return numba_cuda.as_cuda_array(arr, sync=False)
    return arr


def run(call: Call, fn, *args):
    """Runs the entry point with the call's workspace and stream, then finish()."""
    try:
        fn(*args, call.ws, call.stream)
    except BaseException:
        call.close()
        raise
    call.finish()


def ptr(x) -> int:
    """The device address of a DeviceArray, a DeviceInput, or 0 for None."""
    if x is None:
        return 0
    return x.ptr


def dims(shape, ax):
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:])


def sequence(values: Sequence):
    return tuple(values)


# ---- the losses on device arrays (options arrive checked by the public functions) ---------------

def _check_sizes(arg, what):
    if arg.size >= 2**62:
        raise ValueError(f"{arg.name}: too many elements ({arg.size}) for {what}")


def sigmoid_cross_entropy_loss(scores, targets, *, ignore, mode, loss_weight, diff, stream, sync):
    c = Call(scores, "scores", stream, sync)
    x = c.main
    t_code = VALUE_CODES[value_dtype(x)]
    if x.ndim < 1:
        raise ValueError(f"scores: expected an array with at least one axis, got shape {x.shape}")
    t = c.arg(targets, "targets")
    same_dtype(t, x)
    if t.size != x.size or t.ndim < 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            "targets: expected the same number of elements and the same first dimension as "
            f"scores {x.shape}, got shape {t.shape}")
    d = c.want(diff, "diff", x.shape, x.dtype, (x, t))
    c.start()
    loss = c.workspace(x.dtype)
    d = c.alloc(d)
    run(c, _core.device_sigmoid_cross_entropy_loss, t_code, x.ptr, t.ptr, x.shape[0], x.size,
        ignore, mode, loss_weight, ptr(d), loss.ptr)
    return c.result(loss), c.result(d)


def softmax_with_loss(scores, labels, *, axis, ignore, mode, loss_weight, diff, prob, stream,
                      sync):
    from ._arrays import axis_value

    c = Call(scores, "scores", stream, sync)
    x = c.main
    t_code = VALUE_CODES[value_dtype(x)]
    if x.ndim < 1:
        raise ValueError(f"scores: expected an array with at least one axis, got shape {x.shape}")
    ax = axis_value(axis, x.shape, "axis", "scores")
    outer, channels, inner = dims(x.shape, ax)
    lab = c.arg(labels, "labels")
    if lab.size != outer * inner:
        raise ValueError(
            f"labels: expected {outer * inner} values (outer {outer} x inner {inner}) for scores "
            f"of shape {x.shape} with axis={ax}, got shape {lab.shape}")
    l_code = label_dtype(lab)
    d = c.want(diff, "diff", x.shape, x.dtype, (x, lab))
    p = c.want(bool(prob), "prob", x.shape, x.dtype)
    c.start()
    loss = c.workspace(x.dtype)
    d = c.alloc(d)
    p = c.alloc(p)
    run(c, _core.device_softmax_with_loss, t_code, l_code, x.ptr, lab.ptr, outer, channels,
        inner, ignore, mode, loss_weight, ptr(d), ptr(p), loss.ptr)
    if prob:
        return c.result(loss), c.result(d), c.result(p)
    return c.result(loss), c.result(d)


def _binary(input, target, stream, sync):
    c = Call(input, "input", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    t = c.arg(target, "target")
    if t.dtype not in VALUE_CODES:
        raise TypeError(f"target: expected a floating dtype (as the input's), got {t.dtype}")
    same_dtype(t, x)
    if t.shape != x.shape:
        raise ValueError(
            f"target: expected the input's shape {x.shape}, got {t.shape} (no broadcasting)")
    return c, x, t, code


def _weight(c, w, name, x):
    a = c.arg(w, name)
    if a is not None:
        if a.dtype not in VALUE_CODES:
            raise TypeError(f"{name}: expected a numeric dtype, got {a.dtype}")
        same_dtype(a, x)
    return a


def _reduced_outputs(c, red, x, loss_shape, grad, inputs):
    g = c.want(grad, "grad", x.shape, x.dtype, inputs)
    per = c.want(red == 0, "loss", loss_shape, x.dtype)
    c.start()
    reduced = c.workspace(x.dtype) if red != 0 else (c.workspace() or None)
    return reduced, c.alloc(per), c.alloc(g)


def _torch_result(c, red, reduced, per, g, want_grad):
    out = c.result(per if red == 0 else reduced)
    return (out, c.result(g)) if want_grad else out


def binary_cross_entropy(input, target, weight, *, red, grad, stream, sync):
    c, x, t, code = _binary(input, target, stream, sync)
    w = _weight(c, weight, "weight", x)
    wp = broadcast(w, x.shape)
    reduced, per, g = _reduced_outputs(c, red, x, x.shape, grad, (x, t, w))
    run(c, _core.device_binary_cross_entropy, code, x.ptr, t.ptr, x.size, *wp, red, ptr(per),
        ptr(g), ptr(reduced))
    return _torch_result(c, red, reduced, per, g, not (grad is False or grad is None))


def binary_cross_entropy_with_logits(input, target, weight, *, red, pos_weight, grad, stream,
                                     sync):
    c, x, t, code = _binary(input, target, stream, sync)
    w = _weight(c, weight, "weight", x)
    pw = _weight(c, pos_weight, "pos_weight", x)
    wb = broadcast(w, x.shape)
    pb = broadcast(pw, x.shape)
    reduced, per, g = _reduced_outputs(c, red, x, x.shape, grad, (x, t, w, pw))
    run(c, _core.device_binary_cross_entropy_with_logits, code, x.ptr, t.ptr, x.size, *wb, *pb,
        red, ptr(per), ptr(g), ptr(reduced))
    return _torch_result(c, red, reduced, per, g, not (grad is False or grad is None))


def _class_layout(x):
    if x.ndim == 0:
        raise ValueError("input: expected an array with at least one dimension (C,), (N, C) or "
                         "(N, C, d1, ..., dK), got shape ()")
    if x.ndim == 1:
        return 1, x.shape[0], 1, ((), (1,)), ()
    pos = x.shape[:1] + x.shape[2:]
    return x.shape[0], x.shape[1], math.prod(x.shape[2:]), (pos,), pos


def _class_weight(c, weight, x, channels):
    w = _weight(c, weight, "weight", x)
    if w is not None and (w.ndim != 1 or w.shape[0] != channels):
        raise ValueError(
            f"weight: expected a 1-D array of {channels} class weights, got shape {w.shape}")
    return w


def _index_target(t, x, shapes, function):
    if t.shape not in shapes:
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(
            f"target: expected class indices of shape {expected} for input of shape {x.shape}"
            + (" (or class probabilities of the input's shape)" if function == "cross_entropy"
               else "") + f", got shape {t.shape}")
    return index_dtype(t)


def cross_entropy(input, target, weight, *, ignore, red, eps, grad, stream, sync):
    c = Call(input, "input", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    outer, channels, inner, shapes, pos = _class_layout(x)
    t = c.arg(target, "target")
    w = _class_weight(c, weight, x, channels)
    want_grad = not (grad is False or grad is None)
    if t.shape == x.shape:
        if t.dtype not in VALUE_CODES:
            raise TypeError(
                f"target: expected a floating dtype for class probabilities (a target of the "
                f"input's shape {x.shape}), got {t.dtype}")
        same_dtype(t, x)
        if ignore >= 0:
            raise ValueError(
                f"ignore_index: expected a negative value (unused) with class probabilities, "
                f"got {ignore}")
        reduced, per, g = _reduced_outputs(c, red, x, pos, grad, (x, t, w))
        run(c, _core.device_cross_entropy_probabilities, code, x.ptr, t.ptr, outer, channels,
            inner, ptr(w), red, eps, ptr(per), ptr(g), ptr(reduced))
        return _torch_result(c, red, reduced, per, g, want_grad)
    l_code = _index_target(t, x, shapes, "cross_entropy")
    reduced, per, g = _reduced_outputs(c, red, x, pos, grad, (x, t, w))
    run(c, _core.device_cross_entropy_indices, code, l_code, x.ptr, t.ptr, outer, channels,
        inner, ptr(w), ignore, red, eps, ptr(per), ptr(g), ptr(reduced))
    return _torch_result(c, red, reduced, per, g, want_grad)


def nll_loss(input, target, weight, *, ignore, red, grad, stream, sync):
    c = Call(input, "input", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    outer, channels, inner, shapes, pos = _class_layout(x)
    t = c.arg(target, "target")
    w = _class_weight(c, weight, x, channels)
    l_code = _index_target(t, x, shapes, "nll_loss")
    reduced, per, g = _reduced_outputs(c, red, x, pos, grad, (x, t, w))
    run(c, _core.device_nll_loss, code, l_code, x.ptr, t.ptr, outer, channels, inner, ptr(w),
        ignore, red, ptr(per), ptr(g), ptr(reduced))
    return _torch_result(c, red, reduced, per, g, not (grad is False or grad is None))


def softmax_like(which, input, dim, *, stream, sync):
    from ._arrays import axis_value

    c = Call(input, "input", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    ax = axis_value(dim, x.shape, "dim", "input")
    shape = x.shape if x.ndim else (1,)
    outer, channels, inner = dims(shape, ax)
    out = c.want(True, "out", x.shape, x.dtype)
    c.start()
    c.workspace()
    out = c.alloc(out)
    fn = _core.device_log_softmax if which == "log_softmax" else _core.device_softmax
    run(c, fn, code, x.ptr, outer, channels, inner, out.ptr)
    return c.result(out)


def _tf_result(c, loss, g, grad):
    out = c.result(loss)
    return out if grad is False or grad is None else (out, c.result(g))


def _tf_start(c, x, loss_shape, grad, inputs):
    g = c.want(grad, "grad", x.shape, x.dtype, inputs)
    loss = c.want(True, "loss", loss_shape, x.dtype)
    c.start()
    c.workspace()
    return c.alloc(loss), c.alloc(g)


def _tf_real_labels(c, labels, x):
    z = c.arg(labels, "labels")
    if z.dtype not in VALUE_CODES:
        raise TypeError(f"labels: expected the logits' dtype {x.dtype}, got {z.dtype}")
    same_dtype(z, x)
    if z.shape != x.shape:
        raise ValueError(f"labels: expected the shape of logits {x.shape}, got {z.shape}")
    return z


def sigmoid_cross_entropy_with_logits(labels, logits, *, grad, stream, sync):
    c = Call(logits, "logits", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    z = _tf_real_labels(c, labels, x)
    loss, g = _tf_start(c, x, x.shape, grad, (x, z))
    run(c, _core.device_sigmoid_cross_entropy_with_logits, code, z.ptr, x.ptr, x.size, loss.ptr,
        ptr(g))
    return _tf_result(c, loss, g, grad)


def softmax_cross_entropy_with_logits(labels, logits, axis, *, grad, stream, sync):
    from ._arrays import axis_value

    c = Call(logits, "logits", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    if x.ndim == 0:
        raise ValueError("logits: expected an array with at least one dimension, got shape ()")
    ax = axis_value(axis, x.shape, "axis", "logits")
    z = _tf_real_labels(c, labels, x)
    outer, channels, inner = dims(x.shape, ax)
    loss, g = _tf_start(c, x, x.shape[:ax] + x.shape[ax + 1:], grad, (x, z))
    run(c, _core.device_softmax_cross_entropy_with_logits, code, z.ptr, x.ptr, outer, channels,
        inner, loss.ptr, ptr(g))
    return _tf_result(c, loss, g, grad)


def sparse_softmax_cross_entropy_with_logits(labels, logits, *, grad, stream, sync):
    c = Call(logits, "logits", stream, sync)
    x = c.main
    code = VALUE_CODES[value_dtype(x)]
    if x.ndim == 0:
        raise ValueError("logits: expected an array with at least one dimension, got shape ()")
    z = c.arg(labels, "labels")
    if z.shape != x.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {x.shape[:-1]} (the logits' {x.shape} without the class "
            f"axis), got {z.shape}")
    l_code = index_dtype(z)
    loss, g = _tf_start(c, x, z.shape, grad, (x, z))
    run(c, _core.device_sparse_softmax_cross_entropy_with_logits, code, l_code, z.ptr, x.ptr,
        z.size, x.shape[-1], loss.ptr, ptr(g))
    return _tf_result(c, loss, g, grad)
