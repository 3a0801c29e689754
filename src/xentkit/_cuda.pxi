# The device path of the bindings (included into _core.pyx): DLPack import, the DeviceArray that
# owns xentkit's device outputs (exported through __cuda_array_interface__ and __dlpack__), and one
# wrapper per xentkit::cuda entry point taking pointers and stream handles as integers. The
# checks, shapes and stream choice are made in python/xentkit/_device.py.

from cpython.pycapsule cimport (PyCapsule_Destructor, PyCapsule_GetPointer, PyCapsule_IsValid,
                                PyCapsule_New, PyCapsule_SetName)
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc

from xentkit cimport _cuda as xkc
from xentkit._cuda cimport DLManagedTensor, DLTensor


def _register_unavailable_error(type cls):
    """Sets the Python class raised for C++ unavailable_error."""
    xkc.xk_set_unavailable_error_type(cls)


def device_workspace_bytes():
    return xkc.workspace_bytes()


# ---- DLPack import ----------------------------------------------------------------------------

cdef class DLPackImport:
    """Holds a consumed DLManagedTensor until the work that reads it is enqueued; `close()` (or
    dropping the object) calls the producer's deleter once."""
    cdef DLManagedTensor* _m

    def __cinit__(self):
        self._m = NULL

    def close(self):
        cdef DLManagedTensor* m = self._m
        self._m = NULL
        if m != NULL and m.deleter != NULL:
            m.deleter(m)

    @property
    def closed(self):
        return self._m == NULL

    def __dealloc__(self):
        cdef DLManagedTensor* m = self._m
        self._m = NULL
        if m != NULL and m.deleter != NULL:
            m.deleter(m)


def dlpack_import(object capsule):
    """Consumes a "dltensor" capsule (renamed "used_dltensor") and returns (holder, description):
    data (the element pointer, byte_offset included), device_type, device_id, code, bits, lanes,
    shape, strides (in elements, or None for a row-major tensor)."""
    if not PyCapsule_IsValid(capsule, b"dltensor"):
        raise TypeError("expected an unconsumed DLPack capsule named 'dltensor'")
    cdef DLManagedTensor* m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
    if m == NULL:
        raise TypeError("expected a DLPack capsule holding a tensor, got a null pointer")
    PyCapsule_SetName(capsule, b"used_dltensor")
    cdef DLPackImport holder = DLPackImport.__new__(DLPackImport)
    holder._m = m
    cdef DLTensor* t = &m.dl_tensor
    if t.ndim < 0:
        raise ValueError(f"DLPack tensor with ndim {t.ndim}")
    shape = tuple(t.shape[i] for i in range(t.ndim)) if t.ndim > 0 else ()
    strides = None
    if t.strides != NULL and t.ndim > 0:
        strides = tuple(t.strides[i] for i in range(t.ndim))
    return holder, {
        "data": <uintptr_t>t.data + <uintptr_t>t.byte_offset,
        "device_type": t.device.device_type,
        "device_id": t.device.device_id,
        "code": t.dtype.code,
        "bits": t.dtype.bits,
        "lanes": t.dtype.lanes,
        "shape": shape,
        "strides": strides,
    }


# ---- device outputs ---------------------------------------------------------------------------

# name: (itemsize, CAI typestr, DLPack code)
cdef dict _DEVICE_DTYPES = {
    "float16": (2, "<f2", 2),
    "bfloat16": (2, "<V2", 4),
    "float32": (4, "<f4", 2),
    "float64": (8, "<f8", 2),
    "uint8": (1, "|u1", 1),
}


cdef void _dl_deleter(DLManagedTensor* m) noexcept with gil:
    cdef object owner
    if m == NULL:
        return
    if m.manager_ctx != NULL:
        owner = <object>m.manager_ctx
        Py_DECREF(owner)
        m.manager_ctx = NULL
    free(m)


cdef void _dl_capsule_destructor(object capsule) noexcept:
    # An unconsumed capsule still owns its tensor.
    cdef DLManagedTensor* m
    if PyCapsule_IsValid(capsule, b"dltensor"):
        m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        if m != NULL and m.deleter != NULL:
            m.deleter(m)


def _consumer_stream(stream):
    """A DLPack consumer's stream argument as a handle (0 = legacy default), or -1 for none.
    0 is ambiguous for CUDA in the DLPack protocol and refused (1 is the legacy stream)."""
    if stream is None:
        return 0
    if isinstance(stream, bool) or not isinstance(stream, int):
        raise TypeError(f"stream: expected None or an integer stream handle, got {stream!r}")
    if stream == -1:
        return -1
    if stream == 0:
        raise BufferError("stream: 0 is ambiguous for CUDA in the DLPack protocol; expected 1 "
                          "(the legacy default stream), 2 (per-thread), -1 or a stream handle")
    if stream < 0:
        raise ValueError(f"stream: expected -1, 1, 2 or a stream handle, got {stream}")
    return 0 if stream == 1 else stream


cdef class DeviceArray:
    """A C-contiguous array in CUDA device memory that xentkit allocated for a result.

    It is freed (stream-ordered, on the stream the call ran on) when the last reference goes,
    after the work of every consumer stream it was exported to through ``__dlpack__`` so far
    (the streams given there, which must outlive the array; a ``__cuda_array_interface__``
    consumer reading on another stream must keep the array alive itself until it is done).
    Other libraries read it without a copy through ``__cuda_array_interface__`` (version 3, with
    its stream) or ``__dlpack__``/``__dlpack_device__`` (``torch.from_dlpack``,
    ``cupy.from_dlpack``, ``jax.numpy.from_dlpack``); exporting to a consumer on another stream
    makes that stream wait for this one on the device.
    """
    cdef uintptr_t _base
    cdef uintptr_t _ptr
    cdef uintptr_t _stream
    cdef list _consumers
    cdef readonly tuple shape
    cdef readonly str dtype
    cdef readonly int device
    cdef readonly int itemsize

    def __cinit__(self):
        self._base = 0
        self._ptr = 0
        self._stream = 0

    def __init__(self):
        raise TypeError("DeviceArray objects are created by xentkit's device functions")

    def __dealloc__(self):
        cdef uintptr_t base = self._base
        self._base = 0
        if base == 0:
            return
        if self._consumers:
            # The free is ordered on self._stream: make it wait for the consumers' reads first.
            for consumer in self._consumers:
                try:
                    _on_device(self.device, xkc.stream_wait, self._stream, consumer)
                except BaseException:
                    pass
        xkc.release(self.device, base, self._stream)

    @property
    def ptr(self):
        """The device address of the first element."""
        return self._ptr

    @property
    def stream(self):
        """The stream handle the array was written on (0: the legacy default stream)."""
        return self._stream

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        cdef Py_ssize_t n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self):
        return self.size * self.itemsize

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self):
        return (f"xentkit.DeviceArray(shape={self.shape}, dtype={self.dtype}, "
                f"device={self.device}, stream={self._stream:#x})")

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": _DEVICE_DTYPES[self.dtype][1],
            "data": (self._ptr, False),
            "version": 3,
            "strides": None,
            # 0 is not allowed in version 3: the legacy default stream is 1.
            "stream": 1 if self._stream == 0 else self._stream,
        }

    def __dlpack_device__(self):
        return (2, self.device)  # kDLCUDA

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if copy is True:
            raise BufferError("xentkit.DeviceArray: copy=True is not supported")
        if dl_device is not None and tuple(dl_device) != (2, self.device):
            raise BufferError(f"xentkit.DeviceArray: on CUDA device {self.device}, "
                              f"not {tuple(dl_device)}")
        consumer = _consumer_stream(stream)
        if consumer != -1 and consumer != self._stream:
            _on_device(self.device, xkc.stream_wait, consumer, self._stream)
            if self._consumers is None:
                self._consumers = []
            if consumer not in self._consumers:
                self._consumers.append(consumer)
        cdef int ndim = len(self.shape)
        cdef DLManagedTensor* m = <DLManagedTensor*>malloc(
            sizeof(DLManagedTensor) + 2 * max(ndim, 1) * sizeof(int64_t))
        if m == NULL:
            raise MemoryError()
        cdef int64_t* dims = <int64_t*>(<char*>m + sizeof(DLManagedTensor))
        cdef int64_t* steps = dims + max(ndim, 1)
        cdef int64_t step = 1
        cdef int i
        for i in range(ndim - 1, -1, -1):
            dims[i] = self.shape[i]
            steps[i] = step
            step *= max(<int64_t>self.shape[i], 1)
        m.dl_tensor.data = <void*>self._ptr
        m.dl_tensor.device.device_type = 2
        m.dl_tensor.device.device_id = self.device
        m.dl_tensor.ndim = ndim
        m.dl_tensor.dtype.code = _DEVICE_DTYPES[self.dtype][2]
        m.dl_tensor.dtype.bits = 8 * self.itemsize
        m.dl_tensor.dtype.lanes = 1
        m.dl_tensor.shape = dims
        m.dl_tensor.strides = steps
        m.dl_tensor.byte_offset = 0
        Py_INCREF(self)
        m.manager_ctx = <void*>self
        m.deleter = _dl_deleter
        try:
            return PyCapsule_New(m, b"dltensor", <PyCapsule_Destructor>_dl_capsule_destructor)
        except BaseException:
            _dl_deleter(m)
            raise


def _on_device(int device, fn, *args):
    """fn(*args) with `device` current, the previous device restored after."""
    cdef int previous = xkc.current_device()
    if previous != device:
        xkc.set_device(device)
    try:
        return fn(*args)
    finally:
        if previous != device:
            xkc.set_device(previous)


def device_empty(tuple shape, str dtype, int device, uintptr_t stream):
    """A new DeviceArray on the current device (which must be `device`), allocated on `stream`."""
    cdef int itemsize = _DEVICE_DTYPES[dtype][0]
    cdef Py_ssize_t n = itemsize
    for d in shape:
        n *= d
    cdef DeviceArray a = DeviceArray.__new__(DeviceArray)
    a.shape = tuple(int(d) for d in shape)
    a.dtype = dtype
    a.itemsize = itemsize
    a.device = device
    a._stream = stream
    if n > 0:
        with nogil:
            a._base = xkc.allocate(<size_t>n, stream)
        a._ptr = a._base
    return a


def device_workspace(int device, uintptr_t stream, object reduced_dtype):
    """(workspace pointer, owner): one allocation of kWorkspaceBytes, plus the reduced value at
    offset kWorkspaceBytes when reduced_dtype is given. The owner is then that 0-d DeviceArray;
    otherwise a byte array to drop once the call is enqueued (freed in stream order)."""
    cdef size_t ws_bytes = xkc.workspace_bytes()
    cdef DeviceArray a = DeviceArray.__new__(DeviceArray)
    a.device = device
    a._stream = stream
    cdef size_t n = ws_bytes
    if reduced_dtype is None:
        a.shape = (<Py_ssize_t>ws_bytes,)
        a.dtype = "uint8"
        a.itemsize = 1
    else:
        a.shape = ()
        a.dtype = reduced_dtype
        a.itemsize = _DEVICE_DTYPES[reduced_dtype][0]
        n += 8
    with nogil:
        a._base = xkc.allocate(n, stream)
    a._ptr = a._base + (ws_bytes if reduced_dtype is not None else 0)
    return a._base, a


def device_current():
    return xkc.current_device()


def device_set(int device):
    xkc.set_device(device)


def device_of(uintptr_t ptr):
    return xkc.device_of(ptr)


def device_stream_wait(uintptr_t waiter, uintptr_t producer):
    with nogil:
        xkc.stream_wait(waiter, producer)


def device_synchronize(uintptr_t stream):
    with nogil:
        xkc.synchronize(stream)


def device_record_event(uintptr_t stream):
    """An event (a handle) marking the work enqueued on `stream` so far, on the current device."""
    cdef uintptr_t event
    with nogil:
        event = xkc.record_event(stream)
    return event


def device_event_done(uintptr_t event):
    """Whether the work an event marks has completed (never waits)."""
    return xkc.event_done(event)


def device_destroy_event(uintptr_t event):
    xkc.destroy_event(event)


def device_kernel_problem():
    """Why this build's kernels cannot run on the current device, or "" when they can."""
    return (<bytes>xkc.kernel_image_problem()).decode("utf-8", "replace")


def device_on(int device, fn, *args):
    """fn(*args) with `device` current, the previous device restored after."""
    return _on_device(device, fn, *args)


def device_check(uintptr_t workspace, uintptr_t stream):
    with nogil:
        xkc.check(workspace, stream)


# ---- entry points -----------------------------------------------------------------------------

def device_sigmoid_cross_entropy_loss(int t, uintptr_t scores, uintptr_t targets, int64_t outer,
                                      int64_t count, object ignore_label, int normalization,
                                      double loss_weight, uintptr_t diff, uintptr_t loss,
                                      uintptr_t ws, uintptr_t stream):
    cdef SigmoidCrossEntropyLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    with nogil:
        xkc.sigmoid_cross_entropy_loss(t, scores, targets, outer, count, diff, loss, opts, ws,
                                       stream)


def device_softmax_with_loss(int t, int l, uintptr_t scores, uintptr_t labels, int64_t outer,
                             int64_t channels, int64_t inner, object ignore_label,
                             int normalization, double loss_weight, uintptr_t diff,
                             uintptr_t prob, uintptr_t loss, uintptr_t ws, uintptr_t stream):
    cdef SoftmaxWithLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    with nogil:
        xkc.softmax_with_loss(t, l, scores, labels, outer, channels, inner, diff, prob, loss,
                              opts, ws, stream)


def device_binary_cross_entropy(int t, uintptr_t input, uintptr_t target, int64_t count,
                                uintptr_t w, int64_t w_stride, int64_t w_period, int reduction,
                                uintptr_t loss, uintptr_t grad, uintptr_t reduced, uintptr_t ws,
                                uintptr_t stream):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    with nogil:
        xkc.binary_cross_entropy(t, input, target, count, w, w_stride, w_period, loss, grad,
                                 reduced, opts, ws, stream)


def device_binary_cross_entropy_with_logits(int t, uintptr_t input, uintptr_t target,
                                            int64_t count, uintptr_t w, int64_t w_stride,
                                            int64_t w_period, uintptr_t pw, int64_t p_stride,
                                            int64_t p_period, int reduction, uintptr_t loss,
                                            uintptr_t grad, uintptr_t reduced, uintptr_t ws,
                                            uintptr_t stream):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    with nogil:
        xkc.binary_cross_entropy_with_logits(t, input, target, count, w, w_stride, w_period, pw,
                                             p_stride, p_period, loss, grad, reduced, opts, ws,
                                             stream)


def device_cross_entropy_indices(int t, int l, uintptr_t input, uintptr_t target, int64_t outer,
                                 int64_t channels, int64_t inner, uintptr_t weight,
                                 int64_t ignore_index, int reduction, double label_smoothing,
                                 double z_loss, double softcap,
                                 uintptr_t loss, uintptr_t grad, uintptr_t reduced,
                                 uintptr_t ws, uintptr_t stream):
    cdef CrossEntropyOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.softcap = softcap
    with nogil:
        xkc.cross_entropy_indices(t, l, input, target, outer, channels, inner, weight, loss,
                                  grad, reduced, opts, ws, stream)


def device_cross_entropy_probabilities(int t, uintptr_t input, uintptr_t target, int64_t outer,
                                       int64_t channels, int64_t inner, uintptr_t weight,
                                       int reduction, double label_smoothing, uintptr_t loss,
                                       uintptr_t grad, uintptr_t reduced, uintptr_t ws,
                                       uintptr_t stream):
    cdef CrossEntropyOptions opts
    opts.ignore_index = -100
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    with nogil:
        xkc.cross_entropy_probabilities(t, input, target, outer, channels, inner, weight, loss,
                                        grad, reduced, opts, ws, stream)


def device_nll_loss(int t, int l, uintptr_t input, uintptr_t target, int64_t outer,
                    int64_t channels, int64_t inner, uintptr_t weight, int64_t ignore_index,
                    int reduction, uintptr_t loss, uintptr_t grad, uintptr_t reduced,
                    uintptr_t ws, uintptr_t stream):
    cdef NllLossOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    with nogil:
        xkc.nll_loss(t, l, input, target, outer, channels, inner, weight, loss, grad, reduced,
                     opts, ws, stream)


def device_log_softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                       uintptr_t result, uintptr_t ws, uintptr_t stream):
    with nogil:
        xkc.log_softmax(t, input, outer, channels, inner, result, ws, stream)


def device_softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                   uintptr_t result, uintptr_t ws, uintptr_t stream):
    with nogil:
        xkc.softmax(t, input, outer, channels, inner, result, ws, stream)


def device_sigmoid_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                             int64_t count, uintptr_t loss, uintptr_t grad,
                                             uintptr_t ws, uintptr_t stream):
    with nogil:
        xkc.sigmoid_cross_entropy_with_logits(t, labels, logits, count, loss, grad, ws, stream)


def device_softmax_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                             int64_t outer, int64_t channels, int64_t inner,
                                             uintptr_t loss, uintptr_t grad, uintptr_t ws,
                                             uintptr_t stream):
    with nogil:
        xkc.softmax_cross_entropy_with_logits(t, labels, logits, outer, channels, inner, loss,
                                              grad, ws, stream)


def device_sparse_softmax_cross_entropy_with_logits(int t, int l, uintptr_t labels,
                                                    uintptr_t logits, int64_t rows,
                                                    int64_t channels, uintptr_t loss,
                                                    uintptr_t grad, uintptr_t ws,
                                                    uintptr_t stream):
    with nogil:
        xkc.sparse_softmax_cross_entropy_with_logits(t, l, labels, logits, rows, channels, loss,
                                                     grad, ws, stream)
