"""Running a loss on CUDA device arrays: the device, the stream, the lifetimes of the buffers and
the results. Foreign arrays are parsed in ``_foreign.py``; this module holds every stream and
lifetime rule, in ``Call`` (see the README section "CUDA"):

* Device arrays are read in place, never copied: they must be C-contiguous, of one device, and of
  the dtypes the kernels read (float16, bfloat16, float32, float64 values; integer labels).
* The call's stream: an explicit ``stream=`` (an integer handle, or an object with ``.ptr``
  (CuPy), ``.cuda_stream`` (PyTorch) or ``__cuda_stream__``), else the producing library's current
  stream on the array's device (PyTorch, CuPy), else the stream an input's
  ``__cuda_array_interface__`` declares, else the legacy default stream (0).
* Before the kernels: the call's stream waits (on the device) for each argument's producer
  stream, inputs and caller-provided outputs alike: the stream its CAI declares, else its
  library's current stream (PyTorch, CuPy: whatever the dtype, CAI or DLPack), unless a DLPack
  producer was handed the call's stream and ordered itself (the handshake).
* After the kernels: a caller-provided output's library stream (or declared stream) waits for the
  call's stream; the arguments' Python objects and DLPack tensors are kept until an event recorded
  on the call's stream has completed (pruned on later calls), so a temporary argument is not freed
  or reused while the kernels read it.
* Outputs are new device arrays (or the caller's own output array), returned as the main input's
  kind: torch.Tensor, cupy.ndarray, jax.Array, numba DeviceNDArray, else xentkit's DeviceArray.
  The reduced loss is a 0-d device array: no call waits for the device (except the JAX fallback
  for versions whose from_dlpack takes no stream, which waits for the call's stream).
* Errors only the device sees (bad labels, probabilities outside [0, 1]) make the outputs NaN;
  ``sync=True`` waits for the stream and raises them as the CPU functions do.
* A failure after the call's device was made current restores the previous device.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

from . import _core
from ._arrays import axis_value
from ._errors import CudaUnavailableError
from ._foreign import (INDEX_CODES, ITEMSIZE, KDL_CUDA, KDL_CUDA_MANAGED, LABEL_CODES,  # noqa: F401
                       VALUE_CODES, DeviceInput, describe, is_device_array, library_of, parse,
                       parse_cai, parse_dlpack, stream_handle)
from ._foreign import _normal


# ---- streams ----------------------------------------------------------------------------------

def library_stream(obj, device: Optional[int] = None) -> Optional[int]:
    """The current stream, on `device` (default: the array's own), of the library that made `obj`
    (PyTorch, CuPy), or None when it has none to offer (JAX, Numba, others)."""
    lib = library_of(obj)
    if lib == "torch":
        import torch

        dev = obj.device if device is None else torch.device("cuda", device)
        return _normal(int(torch.cuda.current_stream(dev).cuda_stream))
    if lib == "cupy":
        import cupy

        # CuPy's current stream is per device: ask it with the array's device current.
        dev = int(obj.device.id) if device is None else device
        with cupy.cuda.Device(dev):
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


# ---- availability -----------------------------------------------------------------------------

def require_cuda(arg: DeviceInput):
    """CudaUnavailableError naming the argument, unless this build has the CUDA kernels and a
    device is usable."""
    if not _core.cuda_built():
        raise CudaUnavailableError(
            f"{arg.name}: a CUDA device array ({describe(arg.obj)}), but this build of xentkit "
            "has no CUDA kernels (built with XENTKIT_USE_CUDA=OFF); pass host arrays or install "
            "a CUDA build")
    if _core.cuda_device_count() <= 0:
        raise CudaUnavailableError(
            f"{arg.name}: a CUDA device array ({describe(arg.obj)}), but no usable CUDA device "
            "was found (no driver, or no device visible to this process)")
    problem = _core.device_kernel_problem()
    if problem:
        raise CudaUnavailableError(f"{arg.name}: a CUDA device array ({describe(arg.obj)}), but "
                                   f"{problem}")


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
        self.outputs: List[DeviceInput] = []
        self._owners: List[Any] = []
        self._previous = None

    def arg(self, obj, name) -> Optional[DeviceInput]:
        if obj is None:
            return None
        if not is_device_array(obj):
            raise TypeError(
                f"{name}: expected a CUDA device array like {self.main.name}, got a host array "
                f"({describe(obj)}); device and host arrays cannot be mixed in one call")
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
                            f"{describe(value)}")
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
        self.outputs.append(out)
        return out

    def start(self):
        """Checks availability and the devices, makes the input's device current and makes the
        call's stream wait for every argument's producer stream (see producer_stream)."""
        try:
            require_cuda(self.main)
        except BaseException:
            self.abort()  # nothing was enqueued: the DLPack tensors go back now
            raise
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
        try:
            if self._previous != self.device:
                _core.device_set(self.device)
            waited = {self.stream}
            for a in self.args:
                producer = producer_stream(a)
                if producer is not None and producer not in waited:
                    _core.device_stream_wait(self.stream, producer)
                    waited.add(producer)
        except BaseException:
            self.abort()
            raise

    def workspace(self, reduced_dtype=None):
        """The workspace pointer; with reduced_dtype, also the 0-d DeviceArray of the reduced
        value that shares its allocation."""
        try:
            self.ws, owner = _core.device_workspace(self.device, self.stream, reduced_dtype)
        except BaseException:
            self.abort()
            raise
        self._owners.append(owner)
        return owner if reduced_dtype is not None else None

    def alloc(self, spec):
        """The array an output writes: a new DeviceArray for a (shape, dtype) from want(), the
        caller's array itself, or None."""
        if spec is None or isinstance(spec, DeviceInput):
            return spec
        shape, dtype = spec
        try:
            return _core.device_empty(shape, dtype, self.device, self.stream)
        except BaseException:
            self.abort()
            raise

    def finish(self):
        """After the entry point: the caller's own outputs ordered before their library's stream,
        the arguments kept until the call's work is done, the previous device made current;
        sync=True then waits and raises what the device recorded."""
        try:
            try:
                for out in self.outputs:
                    consumer = consumer_stream(out)
                    if consumer is not None and consumer != self.stream:
                        _core.device_stream_wait(consumer, self.stream)
            finally:
                self.retire()
            if self.sync and self.ws:
                _core.device_check(self.ws, self.stream)
        finally:
            self.restore()

    def retire(self):
        """Keeps the arguments (objects and DLPack tensors) alive until the work enqueued on the
        call's stream so far has completed."""
        keep = [(a.obj, a.holder) for a in self.args]
        for a in self.args:
            a.holder = None
        _KEEP.hold(self.stream, keep)
        self._owners.clear()

    def abort(self):
        """A failure before anything that reads the arguments was enqueued: the DLPack tensors
        go back to their producers now and the previous device is made current."""
        for a in self.args:
            a.close()
        self._owners.clear()
        self.restore()

    def restore(self):
        if self._previous is not None and self._previous != self.device:
            _core.device_set(self._previous)
        self._previous = None

    def close(self):
        self.abort()

    def result(self, arr):
        """`arr` as the main input's kind of array (a caller's output array: itself)."""
        if arr is None:
            return None
        if isinstance(arr, DeviceInput):
            return arr.obj
        return convert(arr, self.kind)


def producer_stream(a: DeviceInput) -> Optional[int]:
    """The stream whose pending work a call must wait for before reading or writing `a`: none for
    a DLPack producer that was handed the call's stream (it ordered itself); else the library's
    current stream on the array's device (PyTorch, CuPy), else the stream its
    __cuda_array_interface__ declares (None: nothing to wait for)."""
    if a.via == "dlpack" and a.handshake:
        return None
    lib = library_stream(a.obj, a.device) if a.library in ("torch", "cupy") else None
    return lib if lib is not None else a.stream


def consumer_stream(a: DeviceInput) -> Optional[int]:
    """The stream that reads a caller-provided output next: its library's current stream on its
    device, else the stream its __cuda_array_interface__ declares (None: unknown)."""
    lib = library_stream(a.obj, a.device) if a.library in ("torch", "cupy") else None
    return lib if lib is not None else a.stream


class Keeper:
    """Objects kept alive until the device work enqueued before them has completed: one event
    per call, recorded on its stream; entries whose event has completed are dropped on the next
    hold() (or prune()). The three functions are the device's (replaceable in tests)."""

    def __init__(self, record=None, done=None, destroy=None):
        self._record = record or (lambda stream: _core.device_record_event(stream))
        self._done = done or (lambda event: _core.device_event_done(event))
        self._destroy = destroy or (lambda event: _core.device_destroy_event(event))
        self.pending: List[Any] = []

    def hold(self, stream, keep):
        self.prune()
        try:
            event = self._record(stream)
        except Exception:
            # No event: the device refused (it is failing); wait for the stream instead.
            try:
                _core.device_synchronize(stream)
            except Exception:
                pass
            return
        self.pending.append((event, keep))

    def prune(self):
        still = []
        for event, keep in self.pending:
            try:
                finished = self._done(event)
            except Exception:
                finished = True
            if finished:
                self._destroy(event)
            else:
                still.append((event, keep))
        self.pending = still


_KEEP = Keeper()


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
            # An older JAX takes a capsule and hands us no stream: its compute stream is not the
            # legacy one, so wait for the call's stream on the host before it reads the result.
            _core.device_on(arr.device, _core.device_synchronize, arr.stream)
            return jax.dlpack.from_dlpack(arr.__dlpack__())
    if kind == "numba":
        from numba import cuda as numba_cuda

        if arr.stream != 0:  # Numba's default stream is the legacy one: order it after ours
            _core.device_on(arr.device, _core.device_stream_wait, 0, arr.stream)
        return numba_cuda.as_cuda_array(arr, sync=False)
    return arr


def run(call: Call, fn, *args):
    """Runs the entry point with the call's workspace and stream, then finish(). On a failure
    the work already enqueued may read the arguments: they are kept as after a success."""
    try:
        fn(*args, call.ws, call.stream)
    except BaseException:
        try:
            call.retire()
        finally:
            call.restore()
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


def cross_entropy(input, target, weight, *, ignore, red, eps, grad, stream, sync, z_loss=0.0,
                  softcap=0.0):
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
        if z_loss != 0.0 or softcap != 0.0:
            raise ValueError(
                f"{'z_loss' if z_loss != 0.0 else 'softcap'}: expected "
                f"{'0.0' if z_loss != 0.0 else 'None'} with class probabilities, got "
                f"{z_loss if z_loss != 0.0 else softcap}")
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
        inner, ptr(w), ignore, red, eps, z_loss, softcap, ptr(per), ptr(g), ptr(reduced))
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
