# Declarations mirroring the public C++ headers (cpp/include/xentkit). Every call that can throw
# goes through xk_raise_py_error, which maps the C++ exception classes to Python ones.
from libc.stdint cimport int64_t, uint16_t
from libcpp cimport bool
from libcpp.string cimport string
from libcpp.optional cimport optional


cdef extern from "exception_bridge.hpp" nogil:
    void xk_raise_py_error()
    void xk_set_label_error_type(object) with gil


cdef extern from "xentkit/version.hpp" namespace "xentkit" nogil:
    const char* version_string


cdef extern from "xentkit/options.hpp" namespace "xentkit" nogil:
    cdef enum class Normalization(int):
        full
        valid
        batch_size
        none "xentkit::Normalization::none"

    cdef cppclass SigmoidCrossEntropyLossOptions:
        optional[int64_t] ignore_label
        Normalization normalization
        double loss_weight

    cdef cppclass SoftmaxWithLossOptions:
        optional[int64_t] ignore_label
        Normalization normalization
        double loss_weight

    cdef enum class Reduction(int):
        none "xentkit::Reduction::none"
        mean
        sum "xentkit::Reduction::sum"

    cdef cppclass Broadcast[T]:
        const T* data
        int64_t stride
        int64_t period

    cdef cppclass BinaryCrossEntropyOptions:
        Reduction reduction
        double grad_output

    cdef cppclass CrossEntropyOptions:
        int64_t ignore_index
        Reduction reduction
        double label_smoothing
        double z_loss
        double softcap
        double grad_output

    cdef cppclass NllLossOptions:
        int64_t ignore_index
        Reduction reduction
        double grad_output


cdef extern from "xentkit/threading.hpp" namespace "xentkit" nogil:
    int get_num_threads()
    void set_num_threads(int n) except +xk_raise_py_error


cdef extern from "xentkit/cpu.hpp" namespace "xentkit" nogil:
    string simd_level() except +xk_raise_py_error
    string simd_levels_available() except +xk_raise_py_error
    void set_simd_level(const string& name) except +xk_raise_py_error


cdef extern from "xentkit/device.hpp" namespace "xentkit" nogil:
    bool cuda_built()
    int cuda_device_count()


cdef extern from "xentkit/losses.hpp" namespace "xentkit" nogil:
    T sigmoid_cross_entropy_loss[T](const T* scores, const T* targets, int64_t outer,
                                    int64_t count, T* diff,
                                    const SigmoidCrossEntropyLossOptions& options) \
        except +xk_raise_py_error

    T softmax_with_loss[T, L](const T* scores, const L* labels, int64_t outer, int64_t channels,
                              int64_t inner, T* diff, T* prob,
                              const SoftmaxWithLossOptions& options) except +xk_raise_py_error

    T binary_cross_entropy[T](const T* input, const T* target, int64_t count, Broadcast[T] weight,
                              T* loss, T* grad, const BinaryCrossEntropyOptions& options) \
        except +xk_raise_py_error

    T binary_cross_entropy_with_logits[T](const T* input, const T* target, int64_t count,
                                          Broadcast[T] weight, Broadcast[T] pos_weight, T* loss,
                                          T* grad, const BinaryCrossEntropyOptions& options) \
        except +xk_raise_py_error

    T cross_entropy_indices "xentkit::cross_entropy"[T, L](
        const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
        const T* weight, T* loss, T* grad, const CrossEntropyOptions& options) \
        except +xk_raise_py_error

    T cross_entropy_probabilities "xentkit::cross_entropy"[T](
        const T* input, const T* target, int64_t outer, int64_t channels, int64_t inner,
        const T* weight, T* loss, T* grad, const CrossEntropyOptions& options) \
        except +xk_raise_py_error

    T nll_loss[T, L](const T* input, const L* target, int64_t outer, int64_t channels,
                     int64_t inner, const T* weight, T* loss, T* grad,
                     const NllLossOptions& options) except +xk_raise_py_error

    void log_softmax[T](const T* input, int64_t outer, int64_t channels, int64_t inner,
                        T* out) except +xk_raise_py_error

    void softmax[T](const T* input, int64_t outer, int64_t channels, int64_t inner,
                    T* out) except +xk_raise_py_error

    void sigmoid_cross_entropy_with_logits[T](const T* labels, const T* logits, int64_t count,
                                              T* loss, T* grad) except +xk_raise_py_error

    void softmax_cross_entropy_with_logits[T](const T* labels, const T* logits, int64_t outer,
                                              int64_t channels, int64_t inner, T* loss,
                                              T* grad) except +xk_raise_py_error

    void sparse_softmax_cross_entropy_with_logits[T, L](
        const L* labels, const T* logits, int64_t rows, int64_t channels, T* loss,
        T* grad) except +xk_raise_py_error


cdef extern from "xentkit/half.hpp" nogil:
    ctypedef struct half "xentkit::half":
        uint16_t bits


cdef extern from "xentkit/half.hpp" namespace "xentkit" nogil:
    float cross_entropy_half "xentkit::cross_entropy"[L](
        const half* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
        const float* weight, half* loss, half* grad, const CrossEntropyOptions& options) \
        except +xk_raise_py_error
    float softmax_with_loss_half "xentkit::softmax_with_loss"[L](
        const half* scores, const L* labels, int64_t outer, int64_t channels, int64_t inner,
        half* diff, half* prob, const SoftmaxWithLossOptions& options) except +xk_raise_py_error
    float binary_cross_entropy_with_logits_half "xentkit::binary_cross_entropy_with_logits"(
        const half* input, const half* target, int64_t count, Broadcast[float] weight,
        Broadcast[float] pos_weight, half* loss, half* grad,
        const BinaryCrossEntropyOptions& options) except +xk_raise_py_error
    float sigmoid_cross_entropy_loss_half "xentkit::sigmoid_cross_entropy_loss"(
        const half* scores, const half* targets, int64_t outer, int64_t count, half* diff,
        const SigmoidCrossEntropyLossOptions& options) except +xk_raise_py_error


cdef extern from "xentkit/bfloat16.hpp" nogil:
    ctypedef struct bfloat16 "xentkit::bfloat16":
        uint16_t bits


cdef extern from "xentkit/bfloat16.hpp" namespace "xentkit" nogil:
    float cross_entropy_bf16 "xentkit::cross_entropy"[L](
        const bfloat16* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
        const float* weight, bfloat16* loss, bfloat16* grad, const CrossEntropyOptions& options) \
        except +xk_raise_py_error
    float softmax_with_loss_bf16 "xentkit::softmax_with_loss"[L](
        const bfloat16* scores, const L* labels, int64_t outer, int64_t channels, int64_t inner,
        bfloat16* diff, bfloat16* prob, const SoftmaxWithLossOptions& options) \
        except +xk_raise_py_error
    float binary_cross_entropy_with_logits_bf16 "xentkit::binary_cross_entropy_with_logits"(
        const bfloat16* input, const bfloat16* target, int64_t count, Broadcast[float] weight,
        Broadcast[float] pos_weight, bfloat16* loss, bfloat16* grad,
        const BinaryCrossEntropyOptions& options) except +xk_raise_py_error
    float sigmoid_cross_entropy_loss_bf16 "xentkit::sigmoid_cross_entropy_loss"(
        const bfloat16* scores, const bfloat16* targets, int64_t outer, int64_t count,
        bfloat16* diff, const SigmoidCrossEntropyLossOptions& options) except +xk_raise_py_error
