# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Thin host wrappers over the C++ core. Arguments arrive checked and flattened by the Python
layer (python/xentkit); these functions take 1-D C-contiguous buffers, release the GIL and call
C++ once."""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libcpp.optional cimport optional

from xentkit._cpp cimport (
    Normalization, SigmoidCrossEntropyLossOptions, SoftmaxWithLossOptions, xk_set_label_error_type)
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


__version__ = _cpp.version_string.decode()


def _register_label_error(type cls):
    """Sets the Python class raised for C++ label_error."""
    xk_set_label_error_type(cls)


def get_num_threads():
    return _cpp.get_num_threads()


def set_num_threads(int n):
    _cpp.set_num_threads(n)


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
