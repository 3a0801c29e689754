"""Turning array arguments into C-contiguous NumPy views, with errors that name the argument."""

from __future__ import annotations

import operator

import numpy as np

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_HALF = np.dtype(np.float16)


def _describe(obj):
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


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
    if hasattr(obj, "__cuda_array_interface__") and not hasattr(obj, "__array_interface__"):
        raise TypeError(
            f"{name}: expected a host (CPU) array, got a CUDA device array ({_describe(obj)}); "
            "this build of xentkit has no CUDA kernels for it")
    if hasattr(obj, "__array_interface__") or hasattr(obj, "__array__"):
        return np.asarray(obj)
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name}: expected an array, got {_describe(obj)}") from None
    return np.asarray(view)


def real_dtype_for(arr, name):
    """The dtype computations run in for a floating input: float32 for float16, else its own."""
    dt = arr.dtype
    if dt in _REAL:
        return dt
    if dt == _HALF:
        return np.dtype(np.float32)
    if dt.kind == "f" and dt.itemsize in (2, 4, 8):  # non-native byte order
        return np.dtype(np.float32) if dt.itemsize == 2 else dt.newbyteorder("=")
    raise TypeError(f"{name}: expected dtype float16, float32 or float64, got {dt}")


def contiguous(arr, dtype):
    """A C-contiguous array of `dtype`: `arr` itself when it already is one (no copy)."""
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


def label_array(arr, name):
    """Labels as a C-contiguous array of a dtype the kernels read directly (any integer dtype,
    float32, float64; float16 is widened to float32)."""
    dt = arr.dtype
    if dt.kind in "iu":
        target = dt if dt.isnative else dt.newbyteorder("=")
    elif dt.kind == "f" and dt.itemsize in (2, 4, 8):
        target = np.dtype(np.float32) if dt.itemsize == 2 else (dt if dt.isnative else dt.newbyteorder("="))
    else:
        raise TypeError(f"{name}: expected an integer or floating dtype, got {dt}")
    return contiguous(arr, target)


def ignore_value(ignore_label):
    """ignore_label as an int in the int64 range, or None."""
    if ignore_label is None:
        return None
    if isinstance(ignore_label, (bool, np.bool_)):
        raise TypeError(f"ignore_label: expected an integer or None, got {ignore_label!r}")
    try:
        value = operator.index(ignore_label)
    except TypeError:
        raise TypeError(
            f"ignore_label: expected an integer or None, got {_describe(ignore_label)} "
            f"{ignore_label!r}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"ignore_label: expected an integer in the int64 range, got {value}")
    return value


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
        if arr is None or out.size == 0:
            continue
        if i == 0 and _same_buffer(out, arr):
            continue
        if np.may_share_memory(out, arr):
            raise ValueError(
                f"{name}: expected an array that does not overlap the inputs (only the scores "
                "themselves may be passed, for an in-place result)")
    return out


def _same_buffer(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.nbytes == b.nbytes and a.flags.c_contiguous and b.flags.c_contiguous)
