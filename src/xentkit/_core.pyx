# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Thin host wrappers over the C++ core. Arguments arrive checked and flattened by the Python
layer (python/xentkit); these functions take 1-D C-contiguous buffers, release the GIL and call
C++ once."""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libcpp.optional cimport optional

from xentkit._cpp cimport (
    BinaryCrossEntropyOptions, Broadcast, CrossEntropyOptions, NllLossOptions, Normalization,
    Reduction, SigmoidCrossEntropyLossOptions, SoftmaxWithLossOptions, half,
    bfloat16,
    xk_set_label_error_type)
from xentkit cimport _cpp

ctypedef fused real_t:
    float
    double

ctypedef fused label_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t
    float
    double

ctypedef fused index_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t


__version__ = _cpp.version_string.decode()


def _register_label_error(type cls):
    """Sets the Python class raised for C++ label_error."""
    xk_set_label_error_type(cls)


def get_num_threads():
    return _cpp.get_num_threads()


def set_num_threads(int n):
    _cpp.set_num_threads(n)


def simd_level():
    return _cpp.simd_level().decode()


def simd_levels_available():
    return _cpp.simd_levels_available().decode().split(", ")


def set_simd_level(str name):
    _cpp.set_simd_level(name.encode())


def cuda_built():
    return _cpp.cuda_built()


def cuda_device_count():
    return _cpp.cuda_device_count()


def sigmoid_cross_entropy_loss(const real_t[::1] scores, const real_t[::1] targets,
                               int64_t outer, object ignore_label, int normalization,
                               double loss_weight, real_t[::1] diff):
    cdef SigmoidCrossEntropyLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef int64_t n = scores.shape[0]
    cdef const real_t* ps = &scores[0] if n > 0 else NULL
    cdef const real_t* pt = &targets[0] if n > 0 else NULL
    cdef real_t* pd = NULL
    if diff is not None and n > 0:
        pd = &diff[0]
    cdef real_t loss
    with nogil:
        loss = _cpp.sigmoid_cross_entropy_loss(ps, pt, outer, n, pd, opts)
    return <double>loss


def softmax_with_loss(const real_t[::1] scores, const label_t[::1] labels, int64_t outer,
                      int64_t channels, int64_t inner, object ignore_label, int normalization,
                      double loss_weight, real_t[::1] diff, real_t[::1] prob):
    cdef SoftmaxWithLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef const real_t* ps = &scores[0] if scores.shape[0] > 0 else NULL
    cdef const label_t* pl = &labels[0] if labels.shape[0] > 0 else NULL
    cdef real_t* pd = NULL
    cdef real_t* pp = NULL
    if diff is not None and diff.shape[0] > 0:
        pd = &diff[0]
    if prob is not None and prob.shape[0] > 0:
        pp = &prob[0]
    cdef real_t loss
    with nogil:
        loss = _cpp.softmax_with_loss(ps, pl, outer, channels, inner, pd, pp, opts)
    return <double>loss


# ---- PyTorch-compatible functions -------------------------------------------------------------
# Optional buffers arrive as None; empty ones are passed as NULL (nothing is read or written).

cdef inline Broadcast[real_t] _broadcast(const real_t[::1] data, int64_t stride,
                                         int64_t period) noexcept:
    """A weight read as data[(i // stride) % period], or none (data None or empty)."""
    cdef Broadcast[real_t] b
    if data is not None and data.shape[0] > 0:
        b.data = &data[0]
        b.stride = stride
        b.period = period
    return b


def binary_cross_entropy(const real_t[::1] input, const real_t[::1] target,
                         const real_t[::1] weight, int64_t w_stride, int64_t w_period,
                         int reduction, real_t[::1] loss, real_t[::1] grad):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef int64_t n = input.shape[0]
    cdef Broadcast[real_t] w = _broadcast(weight, w_stride, w_period)
    cdef const real_t* px = &input[0] if n > 0 else NULL
    cdef const real_t* pt = &target[0] if n > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and n > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and n > 0 else NULL
    cdef real_t result
    with nogil:
        result = _cpp.binary_cross_entropy(px, pt, n, w, pl, pg, opts)
    return <double>result


def binary_cross_entropy_with_logits(const real_t[::1] input, const real_t[::1] target,
                                     const real_t[::1] weight, int64_t w_stride,
                                     int64_t w_period, const real_t[::1] pos_weight,
                                     int64_t p_stride, int64_t p_period, int reduction,
                                     real_t[::1] loss, real_t[::1] grad):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef int64_t n = input.shape[0]
    cdef Broadcast[real_t] w = _broadcast(weight, w_stride, w_period)
    cdef Broadcast[real_t] pw = _broadcast(pos_weight, p_stride, p_period)
    cdef const real_t* px = &input[0] if n > 0 else NULL
    cdef const real_t* pt = &target[0] if n > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and n > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and n > 0 else NULL
    cdef real_t result
    with nogil:
        result = _cpp.binary_cross_entropy_with_logits(px, pt, n, w, pw, pl, pg, opts)
    return <double>result


def cross_entropy_indices(const real_t[::1] input, const index_t[::1] target, int64_t outer,
                          int64_t channels, int64_t inner, const real_t[::1] weight,
                          int64_t ignore_index, int reduction, double label_smoothing,
                          double z_loss, double softcap,
                          real_t[::1] loss, real_t[::1] grad):
    cdef CrossEntropyOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.softcap = softcap
    cdef const real_t* px = &input[0] if input.shape[0] > 0 else NULL
    cdef const index_t* pt = &target[0] if target.shape[0] > 0 else NULL
    cdef const real_t* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and loss.shape[0] > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and grad.shape[0] > 0 else NULL
    cdef real_t result
    with nogil:
        result = _cpp.cross_entropy_indices(px, pt, outer, channels, inner, pw, pl, pg, opts)
    return <double>result


def cross_entropy_probabilities(const real_t[::1] input, const real_t[::1] target,
                                int64_t outer, int64_t channels, int64_t inner,
                                const real_t[::1] weight, int reduction, double label_smoothing,
                                real_t[::1] loss, real_t[::1] grad):
    cdef CrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    cdef const real_t* px = &input[0] if input.shape[0] > 0 else NULL
    cdef const real_t* pt = &target[0] if target.shape[0] > 0 else NULL
    cdef const real_t* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and loss.shape[0] > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and grad.shape[0] > 0 else NULL
    cdef real_t result
    with nogil:
        result = _cpp.cross_entropy_probabilities(px, pt, outer, channels, inner, pw, pl, pg,
                                                  opts)
    return <double>result


def nll_loss(const real_t[::1] input, const index_t[::1] target, int64_t outer,
             int64_t channels, int64_t inner, const real_t[::1] weight, int64_t ignore_index,
             int reduction, real_t[::1] loss, real_t[::1] grad):
    cdef NllLossOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    cdef const real_t* px = &input[0] if input.shape[0] > 0 else NULL
    cdef const index_t* pt = &target[0] if target.shape[0] > 0 else NULL
    cdef const real_t* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and loss.shape[0] > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and grad.shape[0] > 0 else NULL
    cdef real_t result
    with nogil:
        result = _cpp.nll_loss(px, pt, outer, channels, inner, pw, pl, pg, opts)
    return <double>result


def log_softmax(const real_t[::1] input, int64_t outer, int64_t channels, int64_t inner,
                real_t[::1] out):
    cdef const real_t* px = &input[0] if input.shape[0] > 0 else NULL
    cdef real_t* po = &out[0] if out.shape[0] > 0 else NULL
    with nogil:
        _cpp.log_softmax(px, outer, channels, inner, po)


def softmax(const real_t[::1] input, int64_t outer, int64_t channels, int64_t inner,
            real_t[::1] out):
    cdef const real_t* px = &input[0] if input.shape[0] > 0 else NULL
    cdef real_t* po = &out[0] if out.shape[0] > 0 else NULL
    with nogil:
        _cpp.softmax(px, outer, channels, inner, po)


# ---- TensorFlow-compatible functions ----------------------------------------------------------

def sigmoid_cross_entropy_with_logits(const real_t[::1] labels, const real_t[::1] logits,
                                      real_t[::1] loss, real_t[::1] grad):
    cdef int64_t n = logits.shape[0]
    cdef const real_t* pz = &labels[0] if n > 0 else NULL
    cdef const real_t* px = &logits[0] if n > 0 else NULL
    cdef real_t* pl = &loss[0] if n > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and n > 0 else NULL
    with nogil:
        _cpp.sigmoid_cross_entropy_with_logits(pz, px, n, pl, pg)


def softmax_cross_entropy_with_logits(const real_t[::1] labels, const real_t[::1] logits,
                                      int64_t outer, int64_t channels, int64_t inner,
                                      real_t[::1] loss, real_t[::1] grad):
    cdef const real_t* pz = &labels[0] if labels.shape[0] > 0 else NULL
    cdef const real_t* px = &logits[0] if logits.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and grad.shape[0] > 0 else NULL
    with nogil:
        _cpp.softmax_cross_entropy_with_logits(pz, px, outer, channels, inner, pl, pg)


def sparse_softmax_cross_entropy_with_logits(const index_t[::1] labels,
                                             const real_t[::1] logits, int64_t rows,
                                             int64_t channels, real_t[::1] loss,
                                             real_t[::1] grad):
    cdef const index_t* pz = &labels[0] if labels.shape[0] > 0 else NULL
    cdef const real_t* px = &logits[0] if logits.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef real_t* pg = &grad[0] if grad is not None and grad.shape[0] > 0 else NULL
    with nogil:
        _cpp.sparse_softmax_cross_entropy_with_logits(pz, px, rows, channels, pl, pg)


# ---- the short path for small, plain calls ----------------------------------------------------
# cross_entropy on a C-contiguous (N, C) float32/float64 ndarray with int64 (N,) targets, and
# binary_cross_entropy_with_logits on C-contiguous input and target of one shape and dtype, no
# options: one buffer request per array and one C++ call, with the GIL held when the call is too
# small for releasing it to pay. Anything else returns None and takes the general path.

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)

cdef object _ndarray_type = None
cdef object _empty_like = None
cdef Py_ssize_t _nogil_bytes = 1 << 16


def _register_array_type(type ndarray, empty_like):
    global _ndarray_type, _empty_like
    _ndarray_type = ndarray
    _empty_like = empty_like


cdef inline int _format_code(Py_buffer* b) noexcept:
    # 1: float32, 2: float64, 3: int64, 0: anything else.
    if b.format == NULL or b.format[0] == 0 or b.format[1] != 0:
        return 0
    cdef char c = b.format[0]
    if c == b'f':
        return 1
    if c == b'd':
        return 2
    if (c == b'l' or c == b'q') and b.itemsize == 8:
        return 3
    return 0


cdef double _ce_call(Py_buffer* xb, Py_buffer* tb, Py_buffer* gb, int kind, int reduction) except *:
    cdef CrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef int64_t n = xb.shape[0]
    cdef int64_t c = xb.shape[1]
    cdef const int64_t* pt = <const int64_t*>tb.buf
    cdef float rf
    cdef double rd
    if kind == 1:
        if xb.len <= _nogil_bytes:
            rf = _cpp.cross_entropy_indices[float, int64_t](
                <const float*>xb.buf, pt, n, c, 1, NULL, NULL,
                <float*>gb.buf if gb != NULL else NULL, opts)
        else:
            with nogil:
                rf = _cpp.cross_entropy_indices[float, int64_t](
                    <const float*>xb.buf, pt, n, c, 1, NULL, NULL,
                    <float*>gb.buf if gb != NULL else NULL, opts)
        return <double>rf
    if xb.len <= _nogil_bytes:
        rd = _cpp.cross_entropy_indices[double, int64_t](
            <const double*>xb.buf, pt, n, c, 1, NULL, NULL,
            <double*>gb.buf if gb != NULL else NULL, opts)
    else:
        with nogil:
            rd = _cpp.cross_entropy_indices[double, int64_t](
                <const double*>xb.buf, pt, n, c, 1, NULL, NULL,
                <double*>gb.buf if gb != NULL else NULL, opts)
    return rd


cdef inline bint _overlap(Py_buffer* a, Py_buffer* b) noexcept:
    cdef const char* pa = <const char*>a.buf
    cdef const char* pb = <const char*>b.buf
    return a.len > 0 and b.len > 0 and pa < pb + b.len and pb < pa + a.len


cdef double _bce_call(Py_buffer* xb, Py_buffer* tb, Py_buffer* gb, int kind,
                      int reduction) except *:
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef Broadcast[float] nof
    cdef Broadcast[double] nod
    cdef float rf
    cdef double rd
    cdef int64_t n
    cdef bint small = xb.len <= _nogil_bytes
    if kind == 1:
        n = xb.len // 4
        if small:
            rf = _cpp.binary_cross_entropy_with_logits[float](
                <const float*>xb.buf, <const float*>tb.buf, n, nof, nof, NULL,
                <float*>gb.buf if gb != NULL else NULL, opts)
        else:
            with nogil:
                rf = _cpp.binary_cross_entropy_with_logits[float](
                    <const float*>xb.buf, <const float*>tb.buf, n, nof, nof, NULL,
                    <float*>gb.buf if gb != NULL else NULL, opts)
        return <double>rf
    n = xb.len // 8
    if small:
        rd = _cpp.binary_cross_entropy_with_logits[double](
            <const double*>xb.buf, <const double*>tb.buf, n, nod, nod, NULL,
            <double*>gb.buf if gb != NULL else NULL, opts)
    else:
        with nogil:
            rd = _cpp.binary_cross_entropy_with_logits[double](
                <const double*>xb.buf, <const double*>tb.buf, n, nod, nod, NULL,
                <double*>gb.buf if gb != NULL else NULL, opts)
    return rd


cdef inline bint _same_shape(Py_buffer* a, Py_buffer* b) noexcept:
    if a.ndim != b.ndim:
        return False
    for i in range(a.ndim):
        if a.shape[i] != b.shape[i]:
            return False
    return True


cdef object _small(int which, object input, object target, int reduction, object grad_arg):
    """The short paths: which = 0 for cross_entropy, 1 for binary_cross_entropy_with_logits.
    None for anything they do not take (the caller then takes the general path, which also
    reports every error)."""
    if type(input) is not _ndarray_type or type(target) is not _ndarray_type:
        return None
    if not (grad_arg is False or grad_arg is True or type(grad_arg) is _ndarray_type):
        return None
    cdef Py_buffer xb
    cdef Py_buffer tb
    cdef Py_buffer gb
    cdef object grad = None
    cdef double value
    try:
        PyObject_GetBuffer(input, &xb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError):
        return None
    try:
        try:
            PyObject_GetBuffer(target, &tb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, ValueError):
            return None
        try:
            kind = _format_code(&xb)
            if kind == 0 or kind == 3:
                return None
            if which == 0:  # (N, C) logits, int64 (N,) targets
                if (xb.ndim != 2 or tb.ndim != 1 or _format_code(&tb) != 3
                        or tb.shape[0] != xb.shape[0] or xb.shape[0] == 0 or xb.shape[1] == 0):
                    return None
            elif _format_code(&tb) != kind or xb.len == 0 or not _same_shape(&xb, &tb):
                return None  # BCE: input and target of one shape and dtype
            if grad_arg is False:
                if which == 0:
                    return _ce_call(&xb, &tb, NULL, kind, reduction)
                return _bce_call(&xb, &tb, NULL, kind, reduction)
            grad = _empty_like(input) if grad_arg is True else grad_arg
            try:
                PyObject_GetBuffer(grad, &gb, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)
            except (BufferError, ValueError):
                return None
            try:
                # A given array: the input's shape and dtype, and either the input itself (in
                # place) or apart from the input and the target.
                if grad_arg is not True and (
                        not _same_shape(&gb, &xb) or _format_code(&gb) != kind
                        or _overlap(&gb, &tb) or (_overlap(&gb, &xb) and gb.buf != xb.buf)):
                    return None
                if which == 0:
                    value = _ce_call(&xb, &tb, &gb, kind, reduction)
                else:
                    value = _bce_call(&xb, &tb, &gb, kind, reduction)
            finally:
                PyBuffer_Release(&gb)
            return value, grad
        finally:
            PyBuffer_Release(&tb)
    finally:
        PyBuffer_Release(&xb)


def cross_entropy_small(object input, object target, int reduction, object grad_arg):
    """cross_entropy(input, target, reduction=mean|sum, grad=False|True|array) for the plain
    case, or None (the caller then takes the general path, which also reports every error)."""
    return _small(0, input, target, reduction, grad_arg)


def binary_cross_entropy_small(object input, object target, int reduction, object grad_arg):
    """binary_cross_entropy_with_logits(input, target, reduction=mean|sum,
    grad=False|True|array) on C-contiguous float32/float64 ndarrays of one shape and dtype, no
    weights, or None (the caller then takes the general path)."""
    return _small(1, input, target, reduction, grad_arg)


# ---- float16 storage: uint16 views of float16 arrays, computed in float32 chunk by chunk --------

cdef inline const half* _hin(const uint16_t[::1] a):
    return <const half*>&a[0] if a is not None and a.shape[0] > 0 else NULL


cdef inline half* _hout(uint16_t[::1] a):
    return <half*>&a[0] if a is not None and a.shape[0] > 0 else NULL


def cross_entropy_indices_half(const uint16_t[::1] input, const index_t[::1] target,
                               int64_t outer, int64_t channels, int64_t inner,
                               const float[::1] weight, int64_t ignore_index, int reduction,
                               double label_smoothing, double z_loss, double softcap,
                               uint16_t[::1] loss, uint16_t[::1] grad):
    cdef CrossEntropyOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.softcap = softcap
    cdef const half* px = _hin(input)
    cdef const index_t* pt = &target[0] if target.shape[0] > 0 else NULL
    cdef const float* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef half* pl = _hout(loss)
    cdef half* pg = _hout(grad)
    cdef float result
    with nogil:
        result = _cpp.cross_entropy_half(px, pt, outer, channels, inner, pw, pl, pg, opts)
    return <double>result


def softmax_with_loss_half(const uint16_t[::1] scores, const label_t[::1] labels, int64_t outer,
                           int64_t channels, int64_t inner, object ignore_label,
                           int normalization, double loss_weight, uint16_t[::1] diff,
                           uint16_t[::1] prob):
    cdef SoftmaxWithLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef const half* ps = _hin(scores)
    cdef const label_t* pl = &labels[0] if labels.shape[0] > 0 else NULL
    cdef half* pd = _hout(diff)
    cdef half* pp = _hout(prob)
    cdef float loss
    with nogil:
        loss = _cpp.softmax_with_loss_half(ps, pl, outer, channels, inner, pd, pp, opts)
    return <double>loss


def binary_cross_entropy_with_logits_half(
        const uint16_t[::1] input, const uint16_t[::1] target, const float[::1] weight,
        int64_t w_stride, int64_t w_period, const float[::1] pos_weight, int64_t p_stride,
        int64_t p_period, int reduction, uint16_t[::1] loss, uint16_t[::1] grad):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef int64_t n = input.shape[0]
    cdef Broadcast[float] w = _broadcast(weight, w_stride, w_period)
    cdef Broadcast[float] pw = _broadcast(pos_weight, p_stride, p_period)
    cdef const half* px = _hin(input)
    cdef const half* pt = _hin(target)
    cdef half* pl = _hout(loss)
    cdef half* pg = _hout(grad)
    cdef float result
    with nogil:
        result = _cpp.binary_cross_entropy_with_logits_half(px, pt, n, w, pw, pl, pg, opts)
    return <double>result


def sigmoid_cross_entropy_loss_half(const uint16_t[::1] scores, const uint16_t[::1] targets,
                                    int64_t outer, object ignore_label, int normalization,
                                    double loss_weight, uint16_t[::1] diff):
    cdef SigmoidCrossEntropyLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef int64_t n = scores.shape[0]
    cdef const half* ps = _hin(scores)
    cdef const half* pt = _hin(targets)
    cdef half* pd = _hout(diff)
    cdef float loss
    with nogil:
        loss = _cpp.sigmoid_cross_entropy_loss_half(ps, pt, outer, n, pd, opts)
    return <double>loss


# ---- bfloat16 storage: the same over uint16 views of bfloat16 arrays ----------------------------

cdef inline const bfloat16* _bin(const uint16_t[::1] a):
    return <const bfloat16*>&a[0] if a is not None and a.shape[0] > 0 else NULL


cdef inline bfloat16* _bout(uint16_t[::1] a):
    return <bfloat16*>&a[0] if a is not None and a.shape[0] > 0 else NULL


def cross_entropy_indices_bf16(const uint16_t[::1] input, const index_t[::1] target,
                               int64_t outer, int64_t channels, int64_t inner,
                               const float[::1] weight, int64_t ignore_index, int reduction,
                               double label_smoothing, double z_loss, double softcap,
                               uint16_t[::1] loss, uint16_t[::1] grad):
    cdef CrossEntropyOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.softcap = softcap
    cdef const bfloat16* px = _bin(input)
    cdef const index_t* pt = &target[0] if target.shape[0] > 0 else NULL
    cdef const float* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef bfloat16* pl = _bout(loss)
    cdef bfloat16* pg = _bout(grad)
    cdef float result
    with nogil:
        result = _cpp.cross_entropy_bf16(px, pt, outer, channels, inner, pw, pl, pg, opts)
    return <double>result


def softmax_with_loss_bf16(const uint16_t[::1] scores, const label_t[::1] labels, int64_t outer,
                           int64_t channels, int64_t inner, object ignore_label,
                           int normalization, double loss_weight, uint16_t[::1] diff,
                           uint16_t[::1] prob):
    cdef SoftmaxWithLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef const bfloat16* ps = _bin(scores)
    cdef const label_t* pl = &labels[0] if labels.shape[0] > 0 else NULL
    cdef bfloat16* pd = _bout(diff)
    cdef bfloat16* pp = _bout(prob)
    cdef float loss
    with nogil:
        loss = _cpp.softmax_with_loss_bf16(ps, pl, outer, channels, inner, pd, pp, opts)
    return <double>loss


def binary_cross_entropy_with_logits_bf16(
        const uint16_t[::1] input, const uint16_t[::1] target, const float[::1] weight,
        int64_t w_stride, int64_t w_period, const float[::1] pos_weight, int64_t p_stride,
        int64_t p_period, int reduction, uint16_t[::1] loss, uint16_t[::1] grad):
    cdef BinaryCrossEntropyOptions opts
    opts.reduction = <Reduction>reduction
    cdef int64_t n = input.shape[0]
    cdef Broadcast[float] w = _broadcast(weight, w_stride, w_period)
    cdef Broadcast[float] pw = _broadcast(pos_weight, p_stride, p_period)
    cdef const bfloat16* px = _bin(input)
    cdef const bfloat16* pt = _bin(target)
    cdef bfloat16* pl = _bout(loss)
    cdef bfloat16* pg = _bout(grad)
    cdef float result
    with nogil:
        result = _cpp.binary_cross_entropy_with_logits_bf16(px, pt, n, w, pw, pl, pg, opts)
    return <double>result


def sigmoid_cross_entropy_loss_bf16(const uint16_t[::1] scores, const uint16_t[::1] targets,
                                    int64_t outer, object ignore_label, int normalization,
                                    double loss_weight, uint16_t[::1] diff):
    cdef SigmoidCrossEntropyLossOptions opts
    if ignore_label is not None:
        opts.ignore_label = optional[int64_t](<int64_t>ignore_label)
    opts.normalization = <Normalization>normalization
    opts.loss_weight = loss_weight
    cdef int64_t n = scores.shape[0]
    cdef const bfloat16* ps = _bin(scores)
    cdef const bfloat16* pt = _bin(targets)
    cdef bfloat16* pd = _bout(diff)
    cdef float loss
    with nogil:
        loss = _cpp.sigmoid_cross_entropy_loss_bf16(ps, pt, outer, n, pd, opts)
    return <double>loss


include "_linear.pxi"
include "_cuda.pxi"
