# The fused linear cross-entropy's per-chunk primitive (xentkit/linear.hpp). The chunk loop and
# its matrix products live in python/xentkit/_linear.py (NumPy's BLAS) and
# python/xentkit/torch/_linear.py (torch.matmul); these wrappers check nothing the C++ does not.

from xentkit._cpp cimport xk_raise_py_error

cdef extern from "xentkit/linear.hpp" namespace "xentkit" nogil:
    cdef cppclass LinearCrossEntropyPlan:
        int64_t rows
        int64_t classes
        int64_t valid
        double divisor
        double grad_scale
        CrossEntropyOptions options

    LinearCrossEntropyPlan plan_linear_cross_entropy[T, L](
        const L* target, int64_t rows, int64_t classes, const T* weight,
        const CrossEntropyOptions& options) except +xk_raise_py_error
    double linear_cross_entropy_chunk[T, L](
        const LinearCrossEntropyPlan& plan, T* logits, const L* target, int64_t n,
        const T* weight, T* loss, bint grad) except +xk_raise_py_error
    double linear_cross_entropy_chunk_half "xentkit::linear_cross_entropy_chunk"[L](
        const LinearCrossEntropyPlan& plan, half* logits, const L* target, int64_t n,
        const float* weight, half* loss, bint grad) except +xk_raise_py_error
    double linear_cross_entropy_chunk_bf16 "xentkit::linear_cross_entropy_chunk"[L](
        const LinearCrossEntropyPlan& plan, bfloat16* logits, const L* target, int64_t n,
        const float* weight, bfloat16* loss, bint grad) except +xk_raise_py_error
    double linear_cross_entropy_result(const LinearCrossEntropyPlan& plan, double sum)


cdef class LinearPlan:
    """A checked plan: the targets validated, the divisor of "mean" and the gradient scale."""
    cdef LinearCrossEntropyPlan plan

    @property
    def rows(self):
        return self.plan.rows

    @property
    def classes(self):
        return self.plan.classes

    @property
    def valid(self):
        return self.plan.valid

    @property
    def divisor(self):
        return self.plan.divisor

    @property
    def grad_scale(self):
        return self.plan.grad_scale

    def result(self, double total):
        """The call's loss from the sum of its chunks."""
        return linear_cross_entropy_result(self.plan, total)


def linear_plan(const index_t[::1] target, int64_t classes, const double[::1] weight,
                int64_t ignore_index, int reduction, double label_smoothing, double z_loss,
                double softcap, double grad_output):
    cdef CrossEntropyOptions opts
    opts.ignore_index = ignore_index
    opts.reduction = <Reduction>reduction
    opts.label_smoothing = label_smoothing
    opts.z_loss = z_loss
    opts.softcap = softcap
    opts.grad_output = grad_output
    cdef int64_t rows = target.shape[0]
    cdef const index_t* pt = &target[0] if rows > 0 else NULL
    cdef const double* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef LinearPlan out = LinearPlan()
    with nogil:
        out.plan = plan_linear_cross_entropy(pt, rows, classes, pw, opts)
    return out


def linear_chunk(LinearPlan plan, real_t[::1] logits, const index_t[::1] target,
                 const real_t[::1] weight, real_t[::1] loss, bint grad):
    """logits: the chunk's n x classes logits (flat); replaced by the gradient when grad."""
    cdef int64_t n = target.shape[0]
    cdef real_t* px = &logits[0] if logits.shape[0] > 0 else NULL
    cdef const index_t* pt = &target[0] if n > 0 else NULL
    cdef const real_t* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef real_t* pl = &loss[0] if loss is not None and loss.shape[0] > 0 else NULL
    cdef double result
    if logits.shape[0] != n * plan.plan.classes:
        raise ValueError(f"logits: expected {n} x {plan.plan.classes} values, got "
                         f"{logits.shape[0]}")
    with nogil:
        result = linear_cross_entropy_chunk(plan.plan, px, pt, n, pw, pl, grad)
    return result


def linear_chunk_16(LinearPlan plan, uint16_t[::1] logits, const index_t[::1] target,
                    const float[::1] weight, uint16_t[::1] loss, bint grad, bint bf16):
    """The same over float16 (bf16 false) or bfloat16 bit patterns."""
    cdef int64_t n = target.shape[0]
    cdef uint16_t* px = &logits[0] if logits.shape[0] > 0 else NULL
    cdef const index_t* pt = &target[0] if n > 0 else NULL
    cdef const float* pw = &weight[0] if weight is not None and weight.shape[0] > 0 else NULL
    cdef uint16_t* pl = &loss[0] if loss is not None and loss.shape[0] > 0 else NULL
    cdef double result
    if logits.shape[0] != n * plan.plan.classes:
        raise ValueError(f"logits: expected {n} x {plan.plan.classes} values, got "
                         f"{logits.shape[0]}")
    with nogil:
        if bf16:
            result = linear_cross_entropy_chunk_bf16(
                plan.plan, <bfloat16*>px, pt, n, pw, <bfloat16*>pl, grad)
        else:
            result = linear_cross_entropy_chunk_half(
                plan.plan, <half*>px, pt, n, pw, <half*>pl, grad)
    return result
