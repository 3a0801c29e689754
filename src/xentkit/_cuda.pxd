# Declarations for the device path: the DLPack ABI (its C structs, written out here) and the
# bridge over xentkit::cuda (device_bridge.hpp). The xentkit::cuda symbols exist in every build: a
# build without CUDA, or a machine without a device, throws unavailable_error from them.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t, uintptr_t

from xentkit._cpp cimport (BinaryCrossEntropyOptions, CrossEntropyOptions, NllLossOptions,
                           SigmoidCrossEntropyLossOptions, SoftmaxWithLossOptions)


from xentkit._cpp cimport xk_raise_py_error


cdef extern from "exception_bridge.hpp" nogil:
    void xk_set_unavailable_error_type(object) with gil


# ---- DLPack (dlpack.h, ABI v0.x: the unversioned DLManagedTensor of capsules named "dltensor")
cdef extern from *:
    """
    struct xk_DLDevice { int32_t device_type; int32_t device_id; };
    struct xk_DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
    struct xk_DLTensor {
      void* data; xk_DLDevice device; int32_t ndim; xk_DLDataType dtype;
      int64_t* shape; int64_t* strides; uint64_t byte_offset;
    };
    struct xk_DLManagedTensor {
      xk_DLTensor dl_tensor; void* manager_ctx; void (*deleter)(xk_DLManagedTensor*);
    };
    """
    ctypedef struct DLDevice "xk_DLDevice":
        int32_t device_type
        int32_t device_id

    ctypedef struct DLDataType "xk_DLDataType":
        uint8_t code
        uint8_t bits
        uint16_t lanes

    ctypedef struct DLTensor "xk_DLTensor":
        void* data
        DLDevice device
        int32_t ndim
        DLDataType dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset

    ctypedef struct DLManagedTensor "xk_DLManagedTensor":
        DLTensor dl_tensor
        void* manager_ctx
        void (*deleter)(DLManagedTensor*) noexcept


cdef extern from "device_bridge.hpp" namespace "xk_device" nogil:
    size_t workspace_bytes()
    uintptr_t allocate(size_t bytes, uintptr_t stream) except +xk_raise_py_error
    void release(int device, uintptr_t ptr, uintptr_t stream)
    int device_of(uintptr_t ptr) except +xk_raise_py_error
    int current_device() except +xk_raise_py_error
    void set_device(int device) except +xk_raise_py_error
    void stream_wait(uintptr_t waiter, uintptr_t producer) except +xk_raise_py_error
    void synchronize(uintptr_t stream) except +xk_raise_py_error
    uintptr_t record_event(uintptr_t stream) except +xk_raise_py_error
    bint event_done(uintptr_t event) except +xk_raise_py_error
    void destroy_event(uintptr_t event)
    const char* kernel_image_problem()
    void check(uintptr_t workspace, uintptr_t stream) except +xk_raise_py_error

    void sigmoid_cross_entropy_loss(int t, uintptr_t scores, uintptr_t targets, int64_t outer,
                                    int64_t count, uintptr_t diff, uintptr_t loss,
                                    const SigmoidCrossEntropyLossOptions& o, uintptr_t ws,
                                    uintptr_t stream) except +xk_raise_py_error
    void softmax_with_loss(int t, int l, uintptr_t scores, uintptr_t labels, int64_t outer,
                           int64_t channels, int64_t inner, uintptr_t diff, uintptr_t prob,
                           uintptr_t loss, const SoftmaxWithLossOptions& o, uintptr_t ws,
                           uintptr_t stream) except +xk_raise_py_error
    void binary_cross_entropy(int t, uintptr_t input, uintptr_t target, int64_t count,
                              uintptr_t w, int64_t w_stride, int64_t w_period, uintptr_t loss,
                              uintptr_t grad, uintptr_t reduced,
                              const BinaryCrossEntropyOptions& o, uintptr_t ws,
                              uintptr_t stream) except +xk_raise_py_error
    void binary_cross_entropy_with_logits(int t, uintptr_t input, uintptr_t target,
                                          int64_t count, uintptr_t w, int64_t w_stride,
                                          int64_t w_period, uintptr_t pw, int64_t p_stride,
                                          int64_t p_period, uintptr_t loss, uintptr_t grad,
                                          uintptr_t reduced, const BinaryCrossEntropyOptions& o,
                                          uintptr_t ws, uintptr_t stream) \
        except +xk_raise_py_error
    void cross_entropy_indices(int t, int l, uintptr_t input, uintptr_t target, int64_t outer,
                               int64_t channels, int64_t inner, uintptr_t weight, uintptr_t loss,
                               uintptr_t grad, uintptr_t reduced, const CrossEntropyOptions& o,
                               uintptr_t ws, uintptr_t stream) except +xk_raise_py_error
    void cross_entropy_probabilities(int t, uintptr_t input, uintptr_t target, int64_t outer,
                                     int64_t channels, int64_t inner, uintptr_t weight,
                                     uintptr_t loss, uintptr_t grad, uintptr_t reduced,
                                     const CrossEntropyOptions& o, uintptr_t ws,
                                     uintptr_t stream) except +xk_raise_py_error
    void nll_loss(int t, int l, uintptr_t input, uintptr_t target, int64_t outer,
                  int64_t channels, int64_t inner, uintptr_t weight, uintptr_t loss,
                  uintptr_t grad, uintptr_t reduced, const NllLossOptions& o, uintptr_t ws,
                  uintptr_t stream) except +xk_raise_py_error
    void log_softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                     uintptr_t result, uintptr_t ws, uintptr_t stream) except +xk_raise_py_error
    void softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                 uintptr_t result, uintptr_t ws, uintptr_t stream) except +xk_raise_py_error
    void sigmoid_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                           int64_t count, uintptr_t loss, uintptr_t grad,
                                           uintptr_t ws, uintptr_t stream) \
        except +xk_raise_py_error
    void softmax_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                           int64_t outer, int64_t channels, int64_t inner,
                                           uintptr_t loss, uintptr_t grad, uintptr_t ws,
                                           uintptr_t stream) except +xk_raise_py_error
    void sparse_softmax_cross_entropy_with_logits(int t, int l, uintptr_t labels,
                                                  uintptr_t logits, int64_t rows,
                                                  int64_t channels, uintptr_t loss,
                                                  uintptr_t grad, uintptr_t ws,
                                                  uintptr_t stream) except +xk_raise_py_error
