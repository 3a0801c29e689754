// The elementwise cross-entropy family on the device, twin of cpp/src/elementwise_cpu.cpp: one
// fused pass that reads inputs and targets once and writes the per-element losses and the
// gradient once. Per call, on the stream:
//   1. the error record of the workspace is zeroed;
//   2. Divide::caffe_valid with a gradient: a pass counts the non-ignored targets per block and a
//      one-block kernel turns the count into the gradient scale (grad_output / max(1, count));
//   3. the main kernel: per element loss and gradient, per block (sum of losses, count);
//   4. a one-block finalize combines the blocks in a fixed order, writes the reduced value and
//      the error record.
// The partition (see elementwise_math.hpp) depends only on n and the element size, and every sum
// is a fixed tree: the same input gives the same bits on every run, aligned or not.

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "elementwise_math.hpp"
#include "device_plan.hpp"

namespace xentkit::cuda::detail {
namespace {

static_assert(elem::kMaxGrid == kMaxBlocks, "the elementwise grid bound is the workspace's");
static_assert(elem::kThreads % 32 == 0 && elem::kThreads <= 1024, "block_sum needs whole warps");

/// Rounds a result of the compute type to the storage type (float first for the 16-bit types,
/// as the CPU rounds its float results to float16).
template <typename S> __device__ __forceinline__ S to_storage(float v) { return from_float<S>(v); }
template <typename S> __device__ __forceinline__ S to_storage(double v) {
  return from_double<S>(v);
}

/// One 16-byte vector of the storage type.
template <typename S, int V>
struct alignas(16) Pack {
  S v[V];
};

/// The slot where the main kernel notes the first bad target. The `raw` field is free until the
/// finalize kernel writes it, and is zeroed with the rest of the record.
__device__ __forceinline__ unsigned long long* target_error_slot(Workspace* ws) {
  return reinterpret_cast<unsigned long long*>(&ws->raw);
}

template <typename S>
struct ElementArgs {
  const S* x;
  const S* t;
  S* diff;  // may alias x (each element is read and written by one thread)
  S* loss;
  const S* w;
  int64_t w_stride, w_period;
  const S* pw;
  int64_t pw_stride, pw_period;
  int64_t n;
  int64_t ignore;
  double scale;              // by value, unless scale_ws is set
  const double* scale_ws;    // the scale computed on the device (Divide::caffe_valid)
  Workspace* ws;
  bool has_ignore;
  bool vec;                  // x, t, diff and loss are 16-byte aligned
};

template <typename S, typename R, bool Probabilities>
__global__ void __launch_bounds__(elem::kThreads) element_kernel(const ElementArgs<S> a) {
  constexpr int V = elem::chunk_elements(static_cast<int>(sizeof(S)));
  using P = Pack<S, V>;
  static_assert(sizeof(P) == 16, "one chunk is one 16-byte vector");
  __shared__ double sum_scratch[32];
  __shared__ long long count_scratch[32];
  // Probabilities: ~(index) of the block's first bad input (diff may overwrite x, so its value is
  // kept here for the error record).
  __shared__ unsigned long long block_bad_x;
  if constexpr (Probabilities) {
    if (threadIdx.x == 0) block_bad_x = 0ULL;
    __syncthreads();
  }
  int64_t my_bad_x = -1;  // this thread's first bad input (its indices ascend)
  R my_bad_value = R(0);

  const double scale = a.scale_ws != nullptr ? *a.scale_ws : a.scale;
  const int64_t chunks = elem::chunk_count(a.n, V);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  elem::BroadcastIndex wi(a.w_stride, a.w_period), pi(a.pw_stride, a.pw_period);
  double acc = 0.0;
  long long valid = 0;

  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += step) {
    const int64_t i0 = c * V;
    const int m = a.n - i0 < V ? static_cast<int>(a.n - i0) : V;
    const bool full = a.vec && m == V;
    R xs[V], ts[V];
    if (full) {
      const P px = *reinterpret_cast<const P*>(a.x + i0);
      const P pt = *reinterpret_cast<const P*>(a.t + i0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        xs[k] = to_compute(px.v[k]);
        ts[k] = to_compute(pt.v[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        xs[k] = k < m ? to_compute(a.x[i0 + k]) : R(0);
        ts[k] = k < m ? to_compute(a.t[i0 + k]) : R(0);
      }
    }
    if (a.w != nullptr) wi.seek(i0);
    if (a.pw != nullptr) pi.seek(i0);
    R ls[V], gs[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      ls[k] = R(0);
      gs[k] = R(0);
      if (k < m) {
        const R w = a.w != nullptr ? to_compute(a.w[wi.k]) : R(1);
        const R pw = (!Probabilities && a.pw != nullptr) ? to_compute(a.pw[pi.k]) : R(1);
        const elem::Element e =
            elem::element<R>(Probabilities, xs[k], ts[k], w, pw, a.has_ignore, a.ignore);
        if (Probabilities && e.bad != 0) {
          if (e.bad & 1) {
            flag_error(a.ws, i0 + k);
            if (my_bad_x < 0) {
              my_bad_x = i0 + k;
              my_bad_value = xs[k];
            }
          } else {
            atomicMax(target_error_slot(a.ws), ~static_cast<unsigned long long>(i0 + k));
          }
        }
        acc += e.loss;
        valid += e.counted;
        ls[k] = static_cast<R>(e.loss);
        gs[k] = elem::scaled_grad<R>(e, scale);
        if (a.w != nullptr) wi.next();
        if (a.pw != nullptr) pi.next();
      }
    }
    if (full) {
      if (a.loss != nullptr) {
        P pl;
#pragma unroll
        for (int k = 0; k < V; ++k) pl.v[k] = to_storage<S>(ls[k]);
        *reinterpret_cast<P*>(a.loss + i0) = pl;
      }
      if (a.diff != nullptr) {
        P pd;
#pragma unroll
        for (int k = 0; k < V; ++k) pd.v[k] = to_storage<S>(gs[k]);
        *reinterpret_cast<P*>(a.diff + i0) = pd;
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (k < m) {
          if (a.loss != nullptr) a.loss[i0 + k] = to_storage<S>(ls[k]);
          if (a.diff != nullptr) a.diff[i0 + k] = to_storage<S>(gs[k]);
        }
      }
    }
  }

  if constexpr (Probabilities) {
    // The block's first bad input and its value, into pre[b] (free once the scale is computed):
    // the finalize kernel reads the value there from the block that owns the first bad input.
    if (my_bad_x >= 0) atomicMax(&block_bad_x, ~static_cast<unsigned long long>(my_bad_x));
    __syncthreads();
    if (my_bad_x >= 0 && ~static_cast<unsigned long long>(my_bad_x) == block_bad_x) {
      *reinterpret_cast<long long*>(&a.ws->pre[blockIdx.x][0]) = static_cast<long long>(my_bad_x);
      a.ws->pre[blockIdx.x][1] = static_cast<double>(my_bad_value);
    }
  }
  const double block_loss = block_sum(acc, sum_scratch);
  const long long block_valid = block_sum(valid, count_scratch);
  if (threadIdx.x == 0) {
    a.ws->partial[blockIdx.x][0] = block_loss;
    a.ws->partial[blockIdx.x][1] = static_cast<double>(block_valid);
  }
}

/// Divide::caffe_valid with a gradient: per block, the targets not ignored (same partition as the
/// main kernel, counted per element).
template <typename S, typename R>
__global__ void __launch_bounds__(elem::kThreads)
    count_kernel(const S* t, int64_t n, int64_t ignore, Workspace* ws) {
  constexpr int V = elem::chunk_elements(static_cast<int>(sizeof(S)));
  __shared__ long long scratch[32];
  const int64_t chunks = elem::chunk_count(n, V);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  long long valid = 0;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += step) {
    const int64_t i0 = c * V;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (i0 + k < n) {
        valid += elem::ignored_target(to_compute(t[i0 + k]), true, ignore) ? 0 : 1;
      }
    }
  }
  const long long block_valid = block_sum(valid, scratch);
  if (threadIdx.x == 0) {
    ws->pre[blockIdx.x][0] = static_cast<double>(block_valid);
    ws->pre[blockIdx.x][1] = 0.0;
  }
}

/// One block: divisor = max(1, count) and the gradient scale grad_output / divisor.
__global__ void __launch_bounds__(elem::kThreads)
    valid_scale_kernel(int blocks, double grad_output, Workspace* ws) {
  __shared__ double scratch[32];
  double count = 0.0;  // a sum of integers below 2^53: exact in any order
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) count += ws->pre[b][0];
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) {
    const double divisor = elem::valid_divisor(count);
    ws->divisor = divisor;
    ws->scale = grad_output / divisor;
  }
}

/// One block, always last: the partials of `blocks` blocks combined in a fixed order (thread j
/// sums blocks j, j + kThreads, ... in order, then a fixed tree), the reduced value, and the
/// error record.
template <typename S, typename R>
__global__ void __launch_bounds__(elem::kThreads)
    finalize_kernel(int blocks, Divide divide, double divisor, S* reduced, const S* t,
                    bool has_ignore, int64_t ignore, Workspace* ws) {
  constexpr int V = elem::chunk_elements(static_cast<int>(sizeof(S)));
  __shared__ double scratch[32];
  double sum = 0.0, count = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
    sum += ws->partial[b][0];
    count += ws->partial[b][1];
  }
  sum = block_sum(sum, scratch);
  count = block_sum(count, scratch);
  if (threadIdx.x != 0) return;

  const double d = divide == Divide::caffe_valid ? elem::valid_divisor(count) : divisor;
  ws->divisor = d;
  const int64_t bad_x = first_error(ws);
  const unsigned long long tslot =
      *const_cast<volatile unsigned long long*>(target_error_slot(ws));
  const int64_t bad_t = tslot == 0ULL ? -1 : static_cast<int64_t>(~tslot);
  const bool bad = bad_x >= 0 || bad_t >= 0;
  if (reduced != nullptr) {
    const R r = bad ? elem::m_nan<R>() : static_cast<R>(sum / d);
    *reduced = to_storage<S>(r);
  }
  if (!bad) return;
  // As the CPU checks: every input first, then every target.
  const bool input = bad_x >= 0;
  const int64_t index = input ? bad_x : bad_t;
  // x may have been overwritten by the gradient: its value comes from the owner block's note.
  double value = 0.0;
  if (input) {
    const int b = elem::owner_block(index, V, blocks);
    const long long noted = *reinterpret_cast<const long long*>(&ws->pre[b][0]);
    value = noted == index ? ws->pre[b][1] : elem::m_nan<double>();
  } else {
    value = static_cast<double>(to_compute(t[index]));
  }
  ws->error = ~static_cast<unsigned long long>(index);
  ws->kind = 2;  // Status::bad_probability
  ws->argument = static_cast<int32_t>(input ? Argument::input : Argument::target);
  ws->label_kind = static_cast<int32_t>(LabelKind::f64);
  ws->index = index;
  ws->raw = static_cast<uint64_t>(__double_as_longlong(value));
  ws->value = value;
  ws->channels = 0;
  ws->ignore = ignore;
  ws->has_ignore = has_ignore ? 1 : 0;
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

template <typename S, typename R>
void launch_typed(const ElementPlan& plan, cudaStream_t stream) {
  constexpr int V = elem::chunk_elements(static_cast<int>(sizeof(S)));
  auto* ws = static_cast<Workspace*>(plan.workspace);
  const S* x = static_cast<const S*>(plan.x);
  const S* t = static_cast<const S*>(plan.t);
  S* diff = static_cast<S*>(plan.diff);
  S* loss = static_cast<S*>(plan.loss);

  // The error record (and the target slot inside it) starts at 0.
  if (cudaMemsetAsync(&ws->error, 0, sizeof(Workspace) - offsetof(Workspace, error), stream) !=
      cudaSuccess) {
    check_launch("elementwise: clearing the workspace record");
  }
  check_launch("elementwise");

  const int64_t n = plan.n > 0 ? plan.n : 0;
  const int grid = elem::grid_for(elem::chunk_count(n, V));
  const bool valid_scale = plan.divide == Divide::caffe_valid && diff != nullptr;
  if (n > 0) {
    if (valid_scale) {
      count_kernel<S, R><<<grid, elem::kThreads, 0, stream>>>(t, n, plan.ignore, ws);
      check_launch("elementwise");
      valid_scale_kernel<<<1, elem::kThreads, 0, stream>>>(grid, plan.grad_output, ws);
      check_launch("elementwise");
    }
    ElementArgs<S> a;
    a.x = x;
    a.t = t;
    a.diff = diff;
    a.loss = loss;
    a.w = static_cast<const S*>(plan.weight.data);
    a.w_stride = plan.weight.stride;
    a.w_period = plan.weight.period;
    a.pw = static_cast<const S*>(plan.pos_weight.data);
    a.pw_stride = plan.pos_weight.stride;
    a.pw_period = plan.pos_weight.period;
    a.n = n;
    a.ignore = plan.ignore;
    // Without a gradient the scale is unused; caffe_valid's divisor is then found at the end.
    a.scale = plan.divide == Divide::caffe_valid ? plan.grad_output
                                                 : plan.grad_output / plan.divisor;
    a.scale_ws = valid_scale ? &ws->scale : nullptr;
    a.ws = ws;
    a.has_ignore = plan.has_ignore;
    a.vec = aligned16(x) && aligned16(t) && (diff == nullptr || aligned16(diff)) &&
            (loss == nullptr || aligned16(loss));
    if (plan.op == ElementOp::probabilities) {
      element_kernel<S, R, true><<<grid, elem::kThreads, 0, stream>>>(a);
    } else {
      element_kernel<S, R, false><<<grid, elem::kThreads, 0, stream>>>(a);
    }
    check_launch("elementwise");
  }
  finalize_kernel<S, R><<<1, elem::kThreads, 0, stream>>>(
      n > 0 ? grid : 0, plan.divide, plan.divisor, static_cast<S*>(plan.reduced), t,
      plan.has_ignore, plan.ignore, ws);
  check_launch("elementwise");
}

}  // namespace

void launch(const ElementPlan& plan, stream_t stream) {
  with_storage(plan.storage, [&](auto traits) {
    using Tr = decltype(traits);
    launch_typed<typename Tr::S, typename Tr::R>(plan, stream);
  });
}

}  // namespace xentkit::cuda::detail
