# Declarations mirroring the public C++ headers (cpp/include/xentkit). Every call that can throw
# goes through xk_raise_py_error, which maps the C++ exception classes to Python ones.
from libc.stdint cimport int64_t
from libcpp cimport bool
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


cdef extern from "xentkit/threading.hpp" namespace "xentkit" nogil:
    int get_num_threads()
    void set_num_threads(int n) except +xk_raise_py_error


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
