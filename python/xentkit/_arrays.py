"""Turning array arguments into C-contiguous NumPy views, with errors that name the argument."""

from __future__ import annotations

import operator

import numpy as np

from ._foreign import describe as _describe
from ._foreign import is_device_array as _is_device

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_HALF = np.dtype(np.float16)


def as_array(obj, name):
    """A NumPy view of an array argument (no copy), or TypeError for anything that is not an array.

    NumPy arrays, objects with the buffer protocol, ``__array_interface__`` or ``__array__`` (a CPU
    tensor, for instance) are arrays; lists, scalars and strings are not.
    """
    if type(obj) is np.ndarray:
        return obj
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray)
    if isinstance(obj, (str, bytes, bytearray)) or obj is None:
        raise TypeError(f"{name}: expected an array, got {_describe(obj)}")
    if _is_device(obj):
        raise TypeError(
            f"{name}: expected a host (CPU) array like the call's main array, got a CUDA device "
            f"array ({_describe(obj)}); device and host arrays cannot be mixed in one call")
    if hasattr(obj, "__array_interface__") or hasattr(obj, "__array__"):
        return np.asarray(obj)
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name}: expected an array, got {_describe(obj)}") from None
    return np.asarray(view)


def is_bfloat16(dtype):
    """Whether `dtype` is ml_dtypes' bfloat16 (told by its name: ml_dtypes is never imported here,
    an array of that dtype can only exist once the caller has imported it)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_floating(dtype):
    """float16/32/64 (any floating kind NumPy has) or bfloat16."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or is_bfloat16(dtype)


def is_numeric(dtype):
    """Integers, booleans excluded, or a floating dtype (bfloat16 included)."""
    return np.dtype(dtype).kind in "iu" or is_floating(dtype)


def compute_dtype(dtype):
    """float16 and bfloat16 are computed in float32; float32/float64 in themselves (native byte
    order)."""
    dtype = np.dtype(dtype).newbyteorder("=")
    return np.dtype(np.float32) if dtype == _HALF or is_bfloat16(dtype) else dtype


def real_dtype_for(arr, name):
    """The dtype computations run in for a floating input: float32 for float16, else its own."""
    return compute_dtype(result_dtype((arr,), (name,)))


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


def result_dtype(arrays, names):
    """The floating dtype of a result computed from these arrays (NumPy's promotion, as PyTorch
    promotes floating inputs), native byte order. TypeError for a non-floating one. bfloat16
    (ml_dtypes) promotes as ml_dtypes registers it: with float16 to float32, with float32/float64
    to those."""
    first = arrays[0].dtype
    if first in _NATIVE_FLOATS and all(a.dtype == first for a in arrays[1:]):
        return first  # one native float dtype: it is its own promotion (the common case, quick)
    for arr, name in zip(arrays, names):
        if is_bfloat16(arr.dtype):
            continue
        if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
            raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, "
                            f"got {arr.dtype}")
    return np.result_type(*[a.dtype.newbyteorder("=") for a in arrays])


def contiguous(arr, dtype):
    """A C-contiguous array of `dtype`: `arr` itself when it already is one (no copy)."""
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


def label_array(arr, name):
    """Labels as a C-contiguous array of a dtype the kernels read directly (any integer dtype,
    float32, float64; float16 and bfloat16 are widened to float32)."""
    dt = arr.dtype
    if dt.kind in "iu":
        target = dt if dt.isnative else dt.newbyteorder("=")
    elif is_bfloat16(dt):
        target = np.dtype(np.float32)
    elif dt.kind == "f" and dt.itemsize in (2, 4, 8):
        target = np.dtype(np.float32) if dt.itemsize == 2 else (dt if dt.isnative else dt.newbyteorder("="))
    else:
        raise TypeError(f"{name}: expected an integer or floating dtype, got {dt}")
    return contiguous(arr, target)


def index_array(arr, name):
    """Class indices as a C-contiguous array of an integer dtype (native byte order)."""
    dt = arr.dtype
    if dt.kind not in "iu":
        raise TypeError(f"{name}: expected class indices of an integer dtype, got {dt}")
    return contiguous(arr, dt if dt.isnative else dt.newbyteorder("="))


def ignore_value(ignore_label, name="ignore_label", allow_none=True):
    """An ignored-label argument as an int in the int64 range (or None when allowed)."""
    if ignore_label is None and allow_none:
        return None
    expected = "an integer or None" if allow_none else "an integer"
    if isinstance(ignore_label, (bool, np.bool_)):
        raise TypeError(f"{name}: expected {expected}, got {ignore_label!r}")
    try:
        value = operator.index(ignore_label)
    except TypeError:
        raise TypeError(
            f"{name}: expected {expected}, got {_describe(ignore_label)} "
            f"{ignore_label!r}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name}: expected an integer in the int64 range, got {value}")
    return value


def axis_value(axis, shape, name, what):
    """An axis argument as an index in [0, ndim) (negative counts from the end). A 0-d array has
    one implicit axis, as in PyTorch."""
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {axis!r}")
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {axis!r}") from None
    n = max(len(shape), 1)
    if not -n <= ax < n:
        raise ValueError(f"{name}: expected an integer in [{-n}, {n}) for {what} of shape "
                         f"{tuple(shape)}, got {ax}")
    return ax % n


def real_value(value, name):
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {_describe(value)} {value!r}") from None


def output_array(out, name, shape, dtype, inputs):
    """Checks a caller-provided output array: C-contiguous, writable, same shape and dtype, and not
    overlapping any of `inputs` unless it *is* the first of them (in-place)."""
    if not isinstance(out, np.ndarray):
        try:
            out = as_array(out, name)
        except TypeError:
            raise TypeError(
                f"{name}: expected True, False or an array, got {_describe(out)}") from None
    if out.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got one with strides {out.strides}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    for i, arr in enumerate(inputs):
        if arr is None or out.size == 0 or not np.may_share_memory(out, arr):
            continue
        if i == 0 and _same_buffer(out, arr):
            continue
        raise ValueError(
            f"{name}: expected an array that does not overlap the inputs (only the scores "
            "themselves may be passed, for an in-place result)")
    return out


def _same_buffer(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.nbytes == b.nbytes and a.flags.c_contiguous and b.flags.c_contiguous)


def gradient_output(value, name, like, result_dt, compute_dt, inputs):
    """The gradient output of a call: (array the kernel writes, array returned), or (None, None).

    `value` is False/None (no gradient: nothing is written), True (a new array of `like`'s shape
    and dtype `result_dt`) or an array to write into (same shape and dtype, C-contiguous, writable,
    not overlapping `inputs` except being inputs[0] itself). A float16 result is computed in a
    float32 scratch array and copied once complete.
    """
    if value is False or value is None:
        return None, None
    if value is True:
        out = np.empty(like.shape, dtype=result_dt)
    else:
        out = output_array(value, name, like.shape, result_dt, inputs)
    if out.dtype == compute_dt:
        return out, out
    return np.empty(like.shape, dtype=compute_dt), out


def finish(work, out):
    """Copies a scratch result into the returned array (float16 results)."""
    if out is not None and work is not out:
        with np.errstate(over="ignore"):  # a value past float16's range becomes +-inf, as a cast
            np.copyto(out, work, casting="unsafe")
    return out


def cast(arr, dtype):
    """`arr` as `dtype` (itself when it already is); values past float16's range become +-inf."""
    if arr.dtype == dtype:
        return arr
    with np.errstate(over="ignore"):
        return arr.astype(dtype)


def flat(arr):
    """A 1-D view of a C-contiguous array, or None."""
    return None if arr is None else arr.reshape(-1)

HALF = np.dtype(np.float16)


def half_view(arr):
    """A native, C-contiguous float16 array as flat uint16 bits (copied once when it is not)."""
    return np.ascontiguousarray(arr, dtype=HALF).reshape(-1).view(np.uint16)


def half_flat(arr):
    """A 1-D uint16 view of a C-contiguous float16 array, or None."""
    return None if arr is None else arr.reshape(-1).view(np.uint16)


def native16(dtype):
    """"half" for native float16, "bf16" for bfloat16 (the suffixes of the 16-bit storage kernels),
    else None."""
    dtype = np.dtype(dtype)
    if dtype == HALF:
        return "half"
    return "bf16" if is_bfloat16(dtype) else None


def bits_view(arr, dtype):
    """An array as flat uint16 bits of the 16-bit `dtype` (copied once when it is not a native,
    C-contiguous array of it)."""
    return np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint16)
