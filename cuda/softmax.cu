// The softmax cross-entropy family on the GPU, the twin of cpp/src/softmax_cpu.cpp (xent_tile /
// nll_tile; the shared scalar formulas are in softmax_math.hpp).
//
// Kernel choice (all launches on the caller's stream, grids fixed by the shape alone):
//   * inner == 1 ("rows", the class axis contiguous):
//       - C <= 1024 (float64: 512): one warp per row, the row held in registers (K = 1..32
//         values per lane, class c = j * 32 + lane: every load and store is one coalesced
//         128-byte access per warp), eight rows per block at a time. x is read once.
//       - larger C whose row fits the staging limit (96 KiB, less where the device's opt-in
//         limit is lower; cuda/softmax_launch.hpp): one block per row, the row copied into
//         dynamic shared memory in its storage type (16-byte loads when aligned), so x is read
//         from global memory once and every output written once.
//       - longer rows (the 128k-256k vocabularies) on sm_90: a thread-block cluster of 2..8
//         blocks per row, each block staging a slice (up to 160 KiB) in its shared memory; the
//         blocks exchange their partial max and sums through distributed shared memory. Chosen at
//         run time from the device's compute capability and the binary's architecture.
//       - otherwise (sm_80, or rows beyond 8 x 160 KiB): one block per row that sweeps x in global
//         memory three times (max, statistics, outputs); the later sweeps mostly hit L2.
//     No layout keeps a register array it cannot hold, so nothing spills.
//   * inner > 1 ("positions", e.g. (N, C, H, W)): one thread per position, looping over the
//     channels with stride inner (coalesced across the threads of a warp), three sweeps; with a
//     long class axis and few positions, one warp per position (the classes split over its lanes).
//   * nll of rows beyond the warp layout reads x[y] alone: the sweeping block kernel, no staging.
// The shared-memory limits and the cluster decisions are made once per device (row_limits).
// Launch sequence per call: zero the workspace's error record; for data-dependent divisors a
// pre-pass over the labels (per-block counts and weight sums) and a one-block kernel combining
// them into the divisor and the gradient scale; the main kernel; a one-block finalize kernel,
// always last, writing the reduced loss and the error record. No host synchronization.
//
// Every layout runs the same per-row algorithm (process_row): the max and its first index;
// e = exp(x - max) with the row's sums (sum, other than the label, other than the argmax,
// smoothing / target sums), each thread summing its own classes in order and the threads
// combined by a fixed butterfly tree; the loss; then p, the gradient and log p from e computed
// again. Loss sums over positions are kept per block in double and combined in block order by
// the finalize kernel, so the result does not depend on timing.

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "common.cuh"
#include "device_plan.hpp"
#include "softmax_launch.hpp"
#include "softmax_math.hpp"

namespace xentkit::cuda::detail {
namespace {

namespace m = math;
using m::Extra;
using m::Stats;

namespace ls = launch_shape;
using ls::kBlockThreads;
using ls::kClusterStageBytes;
using ls::kPosThreads;
using ls::kRowsWarps;
constexpr int64_t kNoIndex = INT64_MAX;

/// Everything a main kernel reads, by value.
struct Params {
  const void* x;
  const void* labels;
  LabelKind label_kind;
  const void* soft;
  const void* weight;
  int64_t outer, channels, inner;
  bool has_ignore;
  int64_t ignore;
  void* diff;
  void* prob;
  void* log_prob;
  void* loss;
  double keep, spread, cap;
  double z_loss;             // z-loss coefficient (class indices; 0: none)
  double softcap;            // logit soft-capping s (0: none)
  double scale;              // used when scale_ptr is null
  const double* scale_ptr;   // the device-computed scale (data-dependent divisors)
  Extra extra;
  bool nll;
  Workspace* ws;
};

/// Per-call constants in the compute type.
template <typename R>
struct Consts {
  R keep, spread, cap, scale, total_weight;
  R z, s, inv_s;  // z-loss; softcap s and 1 / s (s == 0: none)
};

template <typename S> struct ComputeOf { using R = float; };
template <> struct ComputeOf<double> { using R = double; };

/// 1 / v, correctly rounded (the intrinsic keeps the division's slow path out of line).
__device__ __forceinline__ float reciprocal(float v) { return __frcp_rn(v); }
__device__ __forceinline__ double reciprocal(double v) { return __drcp_rn(v); }

template <typename S>
__device__ __forceinline__ auto load(const void* p, int64_t i) {
  return to_compute(static_cast<const S*>(p)[i]);
}

template <typename S, typename R>
__device__ __forceinline__ void store(void* p, int64_t i, R v) {
  if constexpr (sizeof(R) == sizeof(double)) {
    static_cast<S*>(p)[i] = from_double<S>(v);
  } else {
    static_cast<S*>(p)[i] = from_float<S>(v);
  }
}

template <typename S>
__device__ __forceinline__ typename ComputeOf<S>::R class_weight(const Params& P, int64_t c) {
  using R = typename ComputeOf<S>::R;
  return P.weight ? static_cast<R>(load<S>(P.weight, c)) : R(1);
}

/// The row's sums over its threads, field by field (every layout but the cluster's).
template <typename Row, typename R>
__device__ __forceinline__ void reduce_fields(const Row& row, Stats<R>& st, bool extra) {
  st.sum = row.sum(st.sum);
  st.other_y = row.sum(st.other_y);
  st.other_m = row.sum(st.other_m);
  if (extra) {
    st.wsum = row.sum(st.wsum);
    st.qsum = row.sum(st.qsum);
  }
}

// ---- the row layouts -----------------------------------------------------------------
// A row exposes: each(f) over the calling thread's classes in increasing order (f(c, v)),
// the tree reductions (all threads get the result), offset(c) (index of class c in x-shaped
// arrays), leader() and sync() (orders the row's reads of x before its writes of diff, which
// may alias x, across the row's threads).

/// One warp, the row in registers: class c = j * 32 + lane.
template <typename S, int K>
struct WarpRow {
  using R = typename ComputeOf<S>::R;
  R v[K];
  int64_t base, C;
  int lane;
  __device__ WarpRow(const Params& P, int64_t row, int ln)
      : base(row * P.channels), C(P.channels), lane(ln) {
    const S* x = static_cast<const S*>(P.x) + base;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int64_t c = int64_t{j} * 32 + lane;
      v[j] = (c < C && !P.nll) ? to_compute(x[c]) : R(0);  // nll reads x[y] alone
    }
  }
  template <typename F> __device__ __forceinline__ void each(F&& f) const {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int64_t c = int64_t{j} * 32 + lane;
      if (c < C) f(c, v[j]);
    }
  }
  __device__ __forceinline__ int64_t offset(int64_t c) const { return base + c; }
  __device__ __forceinline__ bool leader() const { return lane == 0; }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
  __device__ __forceinline__ R sum(R s) const { return warp_sum(s); }
  __device__ __forceinline__ void reduce(Stats<R>& st, bool extra) const {
    reduce_fields(*this, st, extra);
    __syncwarp();  // every lane has read x[y] (zy) before any lane writes diff (may alias x)
  }
  __device__ __forceinline__ void max(R& mx, int64_t& am) const {
    for (int o = 16; o > 0; o >>= 1) {
      const R m2 = __shfl_xor_sync(0xffffffffu, mx, o);
      const int64_t a2 = __shfl_xor_sync(0xffffffffu, am, o);
      if (m::takes_max(m2, a2, mx, am)) { mx = m2; am = a2; }
    }
  }
};

/// Shared scratch of the block-per-row kernel's reductions.
template <typename R>
struct BlockScratch {
  R r[32];
  int64_t i[32];
};

/// One block, class c = threadIdx.x + j * blockDim.x, read from `src` (the row staged in shared
/// memory, or x itself in global memory).
template <typename S>
struct BlockRow {
  using R = typename ComputeOf<S>::R;
  const S* src;
  int64_t base, C;
  BlockScratch<R>* scratch;
  template <typename F> __device__ __forceinline__ void each(F&& f) const {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) f(c, to_compute(src[c]));
  }
  __device__ __forceinline__ int64_t offset(int64_t c) const { return base + c; }
  __device__ __forceinline__ bool leader() const { return threadIdx.x == 0; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ R sum(R s) const { return block_sum(s, scratch->r); }
  __device__ __forceinline__ void reduce(Stats<R>& st, bool extra) const {
    reduce_fields(*this, st, extra);
  }
  __device__ void max(R& mx, int64_t& am) const {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    auto warp_arg = [](R& a, int64_t& ai) {
      for (int o = 16; o > 0; o >>= 1) {
        const R m2 = __shfl_xor_sync(0xffffffffu, a, o);
        const int64_t a2 = __shfl_xor_sync(0xffffffffu, ai, o);
        if (m::takes_max(m2, a2, a, ai)) { a = m2; ai = a2; }
      }
    };
    warp_arg(mx, am);
    __syncthreads();
    if (lane == 0) { scratch->r[warp] = mx; scratch->i[warp] = am; }
    __syncthreads();
    mx = lane < warps ? scratch->r[lane] : -m::inf<R>();
    am = lane < warps ? scratch->i[lane] : kNoIndex;
    warp_arg(mx, am);
  }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/// What one block of a cluster publishes to the others for one exchange.
template <typename R>
struct ClusterSlot {
  R v[5];
  int64_t am;
};

/// A thread-block cluster, one row: block `rank` holds classes [c0, c1) of the row in its shared
/// memory (class c = c0 + threadIdx.x + j * blockDim.x). Every exchange reduces within the block
/// (the fixed trees of BlockRow), publishes the block's value in a shared slot, syncs the cluster
/// and adds the slots of all blocks in rank order through distributed shared memory. Slots
/// alternate between two buffers: a block rewrites one only after the next cluster sync, which
/// every block reaches only once it has read the exchange before.
template <typename S>
struct ClusterRow {
  using R = typename ComputeOf<S>::R;
  const S* src;   // the block's slice, src[c - c0]
  int64_t base, c0, c1;
  BlockScratch<R>* scratch;
  ClusterSlot<R>* slots;  // [2], in this block's shared memory
  int* turn;              // which buffer the next exchange uses (same in every block)
  unsigned rank, ranks;
  template <typename F> __device__ __forceinline__ void each(F&& f) const {
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) f(c, to_compute(src[c - c0]));
  }
  __device__ __forceinline__ int64_t offset(int64_t c) const { return base + c; }
  __device__ __forceinline__ bool leader() const { return rank == 0 && threadIdx.x == 0; }
  __device__ __forceinline__ void sync() const { cooperative_groups::this_cluster().sync(); }
  /// Publishes n values (and an index) and returns the slot buffer to read.
  __device__ __forceinline__ ClusterSlot<R>* publish(const R* v, int n, int64_t am) const {
    ClusterSlot<R>* slot = slots + *turn;
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < 5; ++i) {
        if (i < n) slot->v[i] = v[i];
      }
      slot->am = am;
    }
    cooperative_groups::this_cluster().sync();
    return slot;
  }
  __device__ void done() const {
    __syncthreads();  // every thread has read *turn
    if (threadIdx.x == 0) *turn ^= 1;
    __syncthreads();
  }
  __device__ R sum(R s) const {
    s = block_sum(s, scratch->r);
    ClusterSlot<R>* slot = publish(&s, 1, 0);
    R t = R(0);
    for (unsigned q = 0; q < ranks; ++q) {
      t += cooperative_groups::this_cluster().map_shared_rank(slot, q)->v[0];
    }
    done();
    return t;
  }
  __device__ void reduce(Stats<R>& st, bool extra) const {
    R v[5] = {st.sum, st.other_y, st.other_m, st.wsum, st.qsum};
    const int n = extra ? 5 : 3;
#pragma unroll
    for (int i = 0; i < 5; ++i) {
      if (i < n) v[i] = block_sum(v[i], scratch->r);
    }
    ClusterSlot<R>* slot = publish(v, n, 0);
    R t[5] = {R(0), R(0), R(0), R(0), R(0)};
    for (unsigned q = 0; q < ranks; ++q) {
      const ClusterSlot<R>* o = cooperative_groups::this_cluster().map_shared_rank(slot, q);
#pragma unroll
      for (int i = 0; i < 5; ++i) {
        if (i < n) t[i] += o->v[i];
      }
    }
    done();
    st.sum = t[0];
    st.other_y = t[1];
    st.other_m = t[2];
    if (extra) {
      st.wsum = t[3];
      st.qsum = t[4];
    }
  }
  __device__ void max(R& mx, int64_t& am) const {
    BlockRow<S>{nullptr, 0, 0, scratch}.max(mx, am);
    ClusterSlot<R>* slot = publish(&mx, 1, am);
    R best = -m::inf<R>();
    int64_t best_i = kNoIndex;
    for (unsigned q = 0; q < ranks; ++q) {
      const ClusterSlot<R>* o = cooperative_groups::this_cluster().map_shared_rank(slot, q);
      if (m::takes_max(o->v[0], o->am, best, best_i)) { best = o->v[0]; best_i = o->am; }
    }
    done();
    mx = best;
    am = best_i;
  }
};
#endif

/// One thread, one position (o, s): class c at x[base + c * inner].
template <typename S>
struct ThreadRow {
  using R = typename ComputeOf<S>::R;
  const S* x;
  int64_t base, C, inner;
  template <typename F> __device__ __forceinline__ void each(F&& f) const {
    for (int64_t c = 0; c < C; ++c) f(c, to_compute(x[base + c * inner]));
  }
  __device__ __forceinline__ int64_t offset(int64_t c) const { return base + c * inner; }
  __device__ __forceinline__ bool leader() const { return true; }
  __device__ __forceinline__ void sync() const {}
  __device__ __forceinline__ R sum(R s) const { return s; }
  __device__ __forceinline__ void reduce(Stats<R>&, bool) const {}
  __device__ __forceinline__ void max(R&, int64_t&) const {}
};

/// One warp, one position (o, s) of a long class axis: class c = lane + j * 32 at
/// x[base + c * inner], swept in global memory (the positions layout with a large C).
template <typename S>
struct WarpPositionRow {
  using R = typename ComputeOf<S>::R;
  const S* x;
  int64_t base, C, inner;
  int lane;
  template <typename F> __device__ __forceinline__ void each(F&& f) const {
    for (int64_t c = lane; c < C; c += 32) f(c, to_compute(x[base + c * inner]));
  }
  __device__ __forceinline__ int64_t offset(int64_t c) const { return base + c * inner; }
  __device__ __forceinline__ bool leader() const { return lane == 0; }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
  __device__ __forceinline__ R sum(R s) const { return warp_sum(s); }
  __device__ __forceinline__ void reduce(Stats<R>& st, bool extra) const {
    reduce_fields(*this, st, extra);
    __syncwarp();  // every lane has read x[y] (zy) before any lane writes diff (may alias x)
  }
  __device__ __forceinline__ void max(R& mx, int64_t& am) const {
    for (int o = 16; o > 0; o >>= 1) {
      const R m2 = __shfl_xor_sync(0xffffffffu, mx, o);
      const int64_t a2 = __shfl_xor_sync(0xffffffffu, am, o);
      if (m::takes_max(m2, a2, mx, am)) { mx = m2; am = a2; }
    }
  }
};

// ---- the per-row algorithm -------------------------------------------------------------------

/// Runs one row (position `pos`, flat index into the labels and losses) on a layout. Every thread
/// of the row calls it; the leader returns the loss and the nll part (others return 0).
/// Force-inlined: a row held in registers (WarpRow) whose address escaped into a call would live
/// in local memory.
template <typename S, typename Row>
__device__ __forceinline__ void process_row(const Row& row, const Params& P,
                                            const Consts<typename Row::R>& k,
                            int64_t pos, double& acc, double& acc_nll) {
  using R = typename Row::R;
  const int64_t C = P.channels;
  const R nan = m::inf<R>() - m::inf<R>();
  int64_t y = xentkit::detail::kIgnored;
  if (P.labels) y = read_class(P.labels, P.label_kind, pos, C, P.has_ignore, P.ignore);
  const bool bad = y == xentkit::detail::kInvalid;
  if (bad && row.leader()) flag_error(P.ws, pos);

  if (P.nll) {
    // l = -w[y] x[y]; the gradient is -scale w[y] at the label, 0 elsewhere. x[y] is read
    // before the row's gradient is written (diff may alias x).
    R l = R(0), wy = R(0);
    if (y >= 0) {
      wy = class_weight<S>(P, y);
      l = m::nll_loss(wy, static_cast<R>(load<S>(P.x, row.offset(y))));
    } else if (bad) {
      l = nan;
    }
    if (P.diff) {
      row.sync();  // orders every read of x[y] before the writes
      const R gy = bad ? nan : -k.scale * wy;
      row.each([&](int64_t c, R) {
        store<S>(P.diff, row.offset(c), (bad || c == y) ? gy : R(0));
      });
    }
    if (row.leader()) {
      if (P.loss) store<S>(P.loss, pos, l);
      acc += static_cast<double>(l);
      acc_nll += static_cast<double>(l);
    }
    return;
  }

  // Soft-capped logits (s > 0): every use of x below reads s tanh(x / s); tanh is monotonic,
  // so the max and its index are those of the raw logits, capped.
  R t_unused = R(0);
  const auto cap_of = [&](R v) { return m::capped(v, k.s, k.inv_s, t_unused); };
  // The max and its first index.
  R mx = -m::inf<R>();
  int64_t am = kNoIndex;
  row.each([&](int64_t c, R v) {
    if (m::takes_max(v, c, mx, am)) { mx = v; am = c; }
  });
  row.max(mx, am);
  mx = cap_of(mx);
  const bool posinf = mx == m::inf<R>();
  // The labelled logit relative to the max, read before any output is written.
  R zy = R(0);
  if (y >= 0) zy = m::shifted(cap_of(static_cast<R>(load<S>(P.x, row.offset(y)))), mx, posinf);

  // The statistics: e = exp(x - max) once per element.
  const Extra extra = P.extra;
  Stats<R> st;
  row.each([&](int64_t c, R v) {
    const R d = m::shifted(cap_of(v), mx, posinf);
    const R e = m::exp_r(d);
    R wc = R(1), q = R(0);
    if (extra != Extra::none) {
      wc = class_weight<S>(P, c);
      if (extra == Extra::soft) q = static_cast<R>(load<S>(P.soft, row.offset(c)));
    }
    m::accumulate(st, extra, c, y, am, d, e, wc, q, k.keep, k.spread);
  });
  row.reduce(st, extra != Extra::none);
  const R logsum = m::log1p_r(st.other_m);

  // The loss.
  R l = R(0), l_nll = R(0), coef_y = R(0), coef_z = R(0);
  if (P.labels) {
    if (y >= 0) {
      const R wy = class_weight<S>(P, y);
      const R a = k.keep * wy;
      coef_y = a * k.scale;
      l_nll = m::weighted(a, m::label_nll(st.other_y, zy, k.cap));
      l = l_nll;
      if (extra == Extra::smooth) l += m::smoothing_term(k.spread, k.total_weight, logsum, st.wsum);
      if (k.z > R(0)) {
        // z-loss: z w[y] lse^2 with lse = max + log(sum); its gradient 2 z w[y] lse softmax.
        const R lse = mx + logsum;
        l += m::z_term(k.z, wy, lse);
        coef_z = R(2) * k.z * wy * lse * k.scale;
      }
    } else if (bad) {
      l = l_nll = nan;
    }
  } else if (P.soft) {
    l = m::soft_loss(st.qsum, logsum, st.wsum);
  }
  if (row.leader()) {
    if (P.loss) store<S>(P.loss, pos, l);
    acc += static_cast<double>(l);
    acc_nll += static_cast<double>(l_nll);
  }
  if (!P.diff && !P.prob && !P.log_prob) return;

  // The outputs, from e computed again (the same value).
  const R inv = reciprocal(st.sum);
  const R spread_scale = k.spread * k.scale;
  const bool smooth = extra == Extra::smooth;
  row.each([&](int64_t c, R v) {
    const int64_t off = row.offset(c);
    R t = R(0);
    const R d = m::shifted(m::capped(v, k.s, k.inv_s, t), mx, posinf);
    if (P.log_prob) store<S>(P.log_prob, off, d - logsum);
    if (!P.diff && !P.prob) return;
    const R p = m::exp_r(d) * inv;
    if (P.prob) store<S>(P.prob, off, p);
    if (!P.diff) return;
    R g = R(0);
    if (P.labels) {
      if (bad) {
        g = nan;
      } else if (y >= 0) {
        const R wc = smooth ? class_weight<S>(P, c) : R(1);
        g = m::label_grad(c == y, p, inv, st.other_y, coef_y, smooth, spread_scale,
                          k.total_weight, wc);
        if (k.z > R(0)) g += coef_z * p;
      }
    } else if (P.soft) {
      const R wc = class_weight<S>(P, c);
      const R qw = wc * (k.keep * static_cast<R>(load<S>(P.soft, off)) + k.spread);
      g = m::soft_grad(c == am, p, inv, st.other_m, st.qsum, qw, k.scale);
    }
    if (k.s > R(0)) g *= R(1) - t * t;  // through the tanh
    store<S>(P.diff, off, g);
  });
}

/// The per-call constants; the total class weight is summed by the block (smoothing only).
template <typename S>
__device__ Consts<typename ComputeOf<S>::R> make_consts(const Params& P, double* scratch) {
  using R = typename ComputeOf<S>::R;
  Consts<R> k;
  k.keep = static_cast<R>(P.keep);
  k.spread = static_cast<R>(P.spread);
  k.cap = static_cast<R>(P.cap);
  k.scale = static_cast<R>(P.scale_ptr ? *P.scale_ptr : P.scale);
  k.z = static_cast<R>(P.z_loss);
  k.s = static_cast<R>(P.softcap);
  k.inv_s = P.softcap > 0.0 ? static_cast<R>(1.0 / P.softcap) : R(0);
  double tw = static_cast<double>(P.channels);
  if (P.weight && P.extra == Extra::smooth) {
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < P.channels; c += blockDim.x) {
      s += static_cast<double>(class_weight<S>(P, c));
    }
    tw = block_sum(s, scratch);
  }
  k.total_weight = static_cast<R>(tw);
  return k;
}

// ---- kernels ---------------------------------------------------------------------------------

/// Copies n elements of storage S from global to shared memory (16-byte loads when both ends
/// allow them).
template <typename S>
__device__ void stage_copy(S* dst, const S* src, int64_t n) {
  const int64_t bytes = n * static_cast<int64_t>(sizeof(S));
  if ((reinterpret_cast<uintptr_t>(src) & 15) == 0 && (bytes & 15) == 0) {
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) d4[i] = s4[i];
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
  }
}

/// Writes the block's two loss sums to the workspace.
__device__ __forceinline__ void write_partial(Workspace* ws, double a, double b) {
  ws->partial[blockIdx.x][0] = a;
  ws->partial[blockIdx.x][1] = b;
}

/// Resident blocks per SM the warp kernel is compiled for: four (64 registers a thread) for short
/// float rows, so that the 512 blocks of a large call run in one wave on a 132-SM device; two
/// (128 registers) for longer rows and float64, one for the longest float64 rows.
template <typename S, int K>
constexpr int warp_kernel_blocks() {
  if (sizeof(typename ComputeOf<S>::R) == 8) return K >= 16 ? 1 : 2;
  return K >= 16 ? 2 : 4;
}

template <typename S, int K>
__global__ void __launch_bounds__(kRowsWarps * 32, (warp_kernel_blocks<S, K>()))
rows_warp_kernel(Params P) {
  using R = typename ComputeOf<S>::R;
  __shared__ double scratch[32];
  __shared__ double sums[kRowsWarps][2];
  const Consts<R> k = make_consts<S>(P, scratch);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t stride = int64_t{gridDim.x} * kRowsWarps;
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t r = int64_t{blockIdx.x} * kRowsWarps + warp; r < P.outer; r += stride) {
    const WarpRow<S, K> row(P, r, lane);
    process_row<S>(row, P, k, r, acc, acc_nll);
  }
  if (lane == 0) { sums[warp][0] = acc; sums[warp][1] = acc_nll; }
  __syncthreads();
  if (threadIdx.x == 0) {
    double a = 0.0, b = 0.0;
    for (int w = 0; w < kRowsWarps; ++w) { a += sums[w][0]; b += sums[w][1]; }
    write_partial(P.ws, a, b);
  }
}

template <typename S, bool kStaged>
__global__ void __launch_bounds__(kBlockThreads, 1)
rows_block_kernel(Params P) {
  using R = typename ComputeOf<S>::R;
  extern __shared__ __align__(16) unsigned char stage[];
  __shared__ double scratch[32];
  __shared__ BlockScratch<R> red;
  const Consts<R> k = make_consts<S>(P, scratch);
  const int64_t C = P.channels;
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t r = blockIdx.x; r < P.outer; r += gridDim.x) {
    const S* x = static_cast<const S*>(P.x) + r * C;
    BlockRow<S> row{x, r * C, C, &red};
    if (kStaged && !P.nll) {  // nll reads x[y] alone
      S* s = reinterpret_cast<S*>(stage);
      __syncthreads();  // the previous row is no longer read
      stage_copy(s, x, C);
      __syncthreads();
      row.src = s;
    }
    process_row<S>(row, P, k, r, acc, acc_nll);
  }
  if (threadIdx.x == 0) write_partial(P.ws, acc, acc_nll);
}

/// Rows too long for one block's shared memory, on sm_90: a cluster of `gridDim.x / clusters`
/// blocks per row, each staging a slice of `slice` classes. Rows go to clusters round robin.
template <typename S>
__global__ void __launch_bounds__(kBlockThreads, 1)
rows_cluster_kernel(Params P, int64_t slice) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using R = typename ComputeOf<S>::R;
  extern __shared__ __align__(16) unsigned char stage[];
  __shared__ double scratch[32];
  __shared__ BlockScratch<R> red;
  __shared__ ClusterSlot<R> slots[2];
  __shared__ int turn;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), ranks = cluster.num_blocks();
  if (threadIdx.x == 0) turn = 0;
  const Consts<R> k = make_consts<S>(P, scratch);  // (its block_sum syncs the block)
  const int64_t C = P.channels;
  const int64_t c0 = static_cast<int64_t>(rank) * slice;
  const int64_t c1 = c0 + slice < C ? c0 + slice : C;
  const int64_t clusters = gridDim.x / ranks;
  S* s = reinterpret_cast<S*>(stage);
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t r = blockIdx.x / ranks; r < P.outer; r += clusters) {
    const S* x = static_cast<const S*>(P.x) + r * C;
    __syncthreads();  // the previous row is no longer read
    if (!P.nll && c1 > c0) stage_copy(s, x + c0, c1 - c0);
    __syncthreads();
    ClusterRow<S> row{s, r * C, c0, c1 > c0 ? c1 : c0, &red, slots, &turn, rank, ranks};
    process_row<S>(row, P, k, r, acc, acc_nll);
  }
  if (threadIdx.x == 0) write_partial(P.ws, acc, acc_nll);
  cluster.sync();  // no block leaves while another may still read its slots
#else
  __trap();  // never launched: the host checks the binary's architecture first
#endif
}

template <typename S>
__global__ void __launch_bounds__(kPosThreads, 1)
positions_kernel(Params P) {
  using R = typename ComputeOf<S>::R;
  __shared__ double scratch[32];
  const Consts<R> k = make_consts<S>(P, scratch);
  const int64_t n = P.outer * P.inner;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t o = i / P.inner, s = i - o * P.inner;
    const ThreadRow<S> row{static_cast<const S*>(P.x), o * P.channels * P.inner + s, P.channels,
                           P.inner};
    process_row<S>(row, P, k, i, acc, acc_nll);
  }
  acc = block_sum(acc, scratch);
  acc_nll = block_sum(acc_nll, scratch);
  if (threadIdx.x == 0) write_partial(P.ws, acc, acc_nll);
}

/// The positions layout with a long class axis: one warp per position, kRowsWarps per block.
template <typename S>
__global__ void __launch_bounds__(kRowsWarps * 32)
positions_warp_kernel(Params P) {
  using R = typename ComputeOf<S>::R;
  __shared__ double scratch[32];
  __shared__ double sums[kRowsWarps][2];
  const Consts<R> k = make_consts<S>(P, scratch);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = P.outer * P.inner;
  const int64_t stride = int64_t{gridDim.x} * kRowsWarps;
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t i = int64_t{blockIdx.x} * kRowsWarps + warp; i < n; i += stride) {
    const int64_t o = i / P.inner, s = i - o * P.inner;
    const WarpPositionRow<S> row{static_cast<const S*>(P.x), o * P.channels * P.inner + s,
                                 P.channels, P.inner, lane};
    process_row<S>(row, P, k, i, acc, acc_nll);
  }
  if (lane == 0) { sums[warp][0] = acc; sums[warp][1] = acc_nll; }
  __syncthreads();
  if (threadIdx.x == 0) {
    double a = 0.0, b = 0.0;
    for (int w = 0; w < kRowsWarps; ++w) { a += sums[w][0]; b += sums[w][1]; }
    write_partial(P.ws, a, b);
  }
}

/// Pre-pass of the data-dependent divisors: per block (non-ignored count, sum of w[y]).
template <typename S>
__global__ void __launch_bounds__(kPosThreads)
prepass_kernel(Params P) {
  __shared__ double scratch[32];
  using R = typename ComputeOf<S>::R;
  const int64_t n = P.outer * P.inner;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  double count = 0.0, wsum = 0.0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t y = 0;
    if (P.labels) {
      y = read_class(P.labels, P.label_kind, i, P.channels, P.has_ignore, P.ignore);
      if (y == xentkit::detail::kInvalid) flag_error(P.ws, i);
    }
    if (y >= 0) {
      count += 1.0;
      wsum += P.labels ? static_cast<double>(class_weight<S>(P, y)) : 1.0;
    }
  }
  count = block_sum(count, scratch);
  wsum = block_sum(wsum, scratch);
  if (threadIdx.x == 0) {
    P.ws->pre[blockIdx.x][0] = count;
    P.ws->pre[blockIdx.x][1] = wsum;
  }
}

/// Combines the pre-pass blocks in order into the divisor and the gradient scale.
__global__ void divisor_kernel(Workspace* ws, int blocks, Divide divide, double grad_output) {
  if (threadIdx.x != 0) return;
  double count = 0.0, wsum = 0.0;
  for (int b = 0; b < blocks; ++b) {
    count += ws->pre[b][0];
    wsum += ws->pre[b][1];
  }
  double divisor, scale;
  if (divide == Divide::caffe_valid) {
    divisor = count > 1.0 ? count : 1.0;
    scale = grad_output / divisor;
  } else {
    divisor = wsum;
    scale = grad_output / wsum;  // as the CPU: a zero weight sum gives a non-finite gradient
  }
  ws->divisor = divisor;
  ws->scale = scale;
}

/// Last kernel of every call: the reduced loss and the error record.
template <typename S>
__global__ void finalize_kernel(Workspace* ws, int blocks, bool device_divisor, double divisor,
                                bool split, void* reduced, const void* labels,
                                LabelKind label_kind, Argument argument, int64_t channels,
                                bool has_ignore, int64_t ignore) {
  if (threadIdx.x != 0) return;
  double total = 0.0, nll = 0.0;
  for (int b = 0; b < blocks; ++b) {
    total += ws->partial[b][0];
    nll += ws->partial[b][1];
  }
  const double div = device_divisor ? ws->divisor : divisor;
  if (!device_divisor) ws->divisor = div;
  const int64_t err = first_error(ws);
  // As the CPU: the two terms are divided apart only when the divisor is 0 (NaN, not inf).
  double r = (split && div == 0.0) ? nll / div + (total - nll) / div : total / div;
  if (err >= 0) r = __longlong_as_double(0x7ff8000000000000LL);
  // 16-bit storage rounds through float32, as the CPU returns a float that is then rounded.
  if (reduced) {
    if constexpr (sizeof(S) == 2) {
      *static_cast<S*>(reduced) = from_float<S>(static_cast<float>(r));
    } else {
      *static_cast<S*>(reduced) = from_double<S>(r);
    }
  }
  ws->kind = err >= 0 ? 1 : 0;  // Status::bad_label
  ws->index = err;
  if (err >= 0) {
    ws->argument = static_cast<int32_t>(argument);
    if (labels) record_label(ws, labels, label_kind, err);
    ws->channels = channels;
    ws->ignore = ignore;
    ws->has_ignore = has_ignore ? 1 : 0;
  }
}

int grid_for(int64_t units, int64_t per_block) {
  const int64_t g = (units + per_block - 1) / per_block;
  return static_cast<int>(g < kMaxBlocks ? g : kMaxBlocks);
}

template <typename S, int K>
void launch_warp_rows(const Params& P, int grid, cudaStream_t stream) {
  rows_warp_kernel<S, K><<<grid, kRowsWarps * 32, 0, stream>>>(P);
}

/// What a device allows the row kernels, decided once per device and kernel instantiation
/// (the attributes are set once, to their largest value, so concurrent calls never change what
/// another call sees, and the long-row path asks the runtime nothing per call).
struct RowLimits {
  int64_t stage_limit = 0;   // largest dynamic shared memory of the staged kernel
  bool cluster = false;      // rows_cluster_kernel runs (sm_90 device, compute_90+ code)
  bool ranks_ok[3] = {false, false, false};  // clusters of 2, 4, 8 blocks fit (occupancy)
};

/// Sets a kernel's dynamic shared memory limit; false (the error cleared) when refused.
template <typename K>
bool set_shared_limit(K kernel, int64_t bytes) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

template <typename S>
RowLimits decide_limits(int dev) {
  using R = typename ComputeOf<S>::R;
  RowLimits lim;
  int optin = 0, major = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    optin = 0;
  }
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    major = 0;
  }
  // The staged kernel: its static shared memory as compiled (the host formula as a fallback).
  cudaFuncAttributes fa{};
  int64_t static_bytes = ls::block_static_bytes(static_cast<int>(sizeof(R)));
  if (cudaFuncGetAttributes(&fa, rows_block_kernel<S, true>) == cudaSuccess) {
    static_bytes = static_cast<int64_t>(fa.sharedSizeBytes);
  } else {
    (void)cudaGetLastError();
  }
  int64_t want = ls::staged_limit(optin, static_bytes, true);
  bool granted = want > ls::kDefaultSharedBytes - static_bytes && set_shared_limit(
      rows_block_kernel<S, true>, want);
  lim.stage_limit = granted ? want : ls::staged_limit(optin, static_bytes, false);

  // The cluster kernel: sm_90 device and code compiled for compute_90 or newer (not JIT-compiled
  // from older PTX, where its body is empty); its shared memory limit set once to the largest
  // slice, and each cluster size asked once whether one cluster fits.
  cudaFuncAttributes ca{};
  if (major < 9 || cudaFuncGetAttributes(&ca, rows_cluster_kernel<S>) != cudaSuccess ||
      ca.ptxVersion < 90) {
    (void)cudaGetLastError();
    return lim;
  }
  if (!set_shared_limit(rows_cluster_kernel<S>, kClusterStageBytes)) return lim;
  lim.cluster = true;
  for (int ranks = 2; ranks <= ls::kClusterMax; ranks *= 2) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(static_cast<unsigned>(ranks));
    cfg.blockDim = dim3(kBlockThreads);
    cfg.dynamicSmemBytes = static_cast<size_t>(kClusterStageBytes);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(ranks);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, rows_cluster_kernel<S>, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();
      active = 0;
    }
    lim.ranks_ok[ls::ranks_index(ranks)] = active >= 1;
  }
  return lim;
}

/// The limits of the current device for storage S (decided on its first call).
template <typename S>
RowLimits row_limits() {
  constexpr int kDevices = 64;
  static std::once_flag once[kDevices];
  static RowLimits limits[kDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    dev = 0;
  }
  if (dev < 0 || dev >= kDevices) return decide_limits<S>(dev);
  std::call_once(once[dev], [dev] { limits[dev] = decide_limits<S>(dev); });
  return limits[dev];
}

/// Launches rows_cluster_kernel when the device's limits allow this row's cluster; returns its
/// grid, or 0 when the caller takes the sweeping block kernel. A launch error is the call's error
/// (check_launch reports it), never a silent change of the reduction tree.
template <typename S>
int launch_cluster(const Params& P, const RowLimits& lim, cudaStream_t stream) {
  const ls::ClusterShape cs = ls::cluster_shape(P.channels, static_cast<int>(sizeof(S)));
  if (!lim.cluster || cs.ranks == 0 || !lim.ranks_ok[ls::ranks_index(cs.ranks)]) return 0;
  const size_t smem = static_cast<size_t>(cs.slice) * sizeof(S);
  const int64_t rows = P.outer;
  const int64_t clusters_max = kMaxBlocks / cs.ranks;
  const int64_t clusters = rows < clusters_max ? rows : clusters_max;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * cs.ranks));
  cfg.blockDim = dim3(kBlockThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs.ranks);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // A refused launch stays the runtime's last error: check_launch() throws it for the call.
  (void)cudaLaunchKernelEx(&cfg, rows_cluster_kernel<S>, P, cs.slice);
  return static_cast<int>(clusters * cs.ranks);
}

template <typename S>
int launch_main(const Params& P, cudaStream_t stream) {
  const int64_t rows = P.outer * P.inner;
  const int64_t C = P.channels;
  constexpr int kElem = static_cast<int>(sizeof(S));
  // Shapes that never stage skip the device limits (no runtime query).
  const bool rows_layout = P.inner <= 1 && C > (kElem == 8 ? 512 : 1024);
  const RowLimits lim = rows_layout ? row_limits<S>() : RowLimits{};
  switch (ls::kernel_for(rows, C, P.inner, kElem, lim.stage_limit, P.nll)) {
    case ls::Kernel::positions: {
      const int grid = grid_for(rows, kPosThreads);
      positions_kernel<S><<<grid, kPosThreads, 0, stream>>>(P);
      return grid;
    }
    case ls::Kernel::warp_positions: {
      const int grid = grid_for(rows, kRowsWarps);
      positions_warp_kernel<S><<<grid, kRowsWarps * 32, 0, stream>>>(P);
      return grid;
    }
    case ls::Kernel::warp_rows: {
      const int grid = grid_for(rows, kRowsWarps);
      if (C <= 32) launch_warp_rows<S, 1>(P, grid, stream);
      else if (C <= 64) launch_warp_rows<S, 2>(P, grid, stream);
      else if (C <= 128) launch_warp_rows<S, 4>(P, grid, stream);
      else if (C <= 256) launch_warp_rows<S, 8>(P, grid, stream);
      else if (C <= 512) launch_warp_rows<S, 16>(P, grid, stream);
      else if constexpr (kElem != 8) launch_warp_rows<S, 32>(P, grid, stream);
      return grid;
    }
    case ls::Kernel::staged_rows: {
      const int grid = grid_for(rows, 1);
      const size_t smem = static_cast<size_t>(ls::staged_bytes(C, kElem));
      rows_block_kernel<S, true><<<grid, kBlockThreads, smem, stream>>>(P);
      return grid;
    }
    case ls::Kernel::long_rows:
      if (const int g = launch_cluster<S>(P, lim, stream)) return g;
      [[fallthrough]];
    case ls::Kernel::sweep_rows:
      break;
  }
  const int grid = grid_for(rows, 1);
  rows_block_kernel<S, false><<<grid, kBlockThreads, 0, stream>>>(P);
  return grid;
}

}  // namespace

void launch(const SoftmaxPlan& plan, stream_t stream_handle) {
  const cudaStream_t stream = stream_handle;
  Workspace* ws = static_cast<Workspace*>(plan.workspace);
  const size_t rec = offsetof(Workspace, error);
  if (cudaMemsetAsync(reinterpret_cast<unsigned char*>(ws) + rec, 0, sizeof(Workspace) - rec,
                      stream) != cudaSuccess) {
    check_launch("softmax: clearing the workspace record");
  }
  check_launch("softmax");

  Params P{};
  P.x = plan.x;
  P.labels = plan.labels;
  P.label_kind = plan.label_kind;
  P.soft = plan.labels ? nullptr : plan.soft;
  P.weight = plan.class_weight;
  P.outer = plan.outer;
  P.channels = plan.channels;
  P.inner = plan.inner;
  P.has_ignore = plan.has_ignore;
  P.ignore = plan.ignore;
  P.diff = plan.diff;
  P.prob = plan.prob;
  P.log_prob = plan.log_prob;
  P.loss = plan.loss;
  const double eps = plan.smoothing > 0.0 ? plan.smoothing : 0.0;
  P.keep = 1.0 - eps;
  P.spread = plan.channels > 0 ? eps / static_cast<double>(plan.channels) : 0.0;
  P.cap = plan.cap;
  P.z_loss = plan.labels ? plan.z_loss : 0.0;
  P.softcap = plan.softcap;
  P.scale = plan.grad_output / plan.divisor;
  P.scale_ptr = nullptr;
  P.extra = P.soft ? Extra::soft : (plan.labels && eps > 0.0 ? Extra::smooth : Extra::none);
  P.nll = plan.op == SoftmaxOp::nll;
  P.ws = ws;

  const int64_t positions = plan.outer * plan.inner;
  // Data-dependent divisors of an empty call are known: max(1, 0) = 1, or a weight sum of 0.
  const bool device_divisor = plan.divide != Divide::constant && positions > 0;
  double divisor = plan.divisor;
  if (plan.divide == Divide::caffe_valid && positions == 0) divisor = 1.0;
  if (plan.divide == Divide::weight_sum && positions == 0) divisor = 0.0;
  with_storage(plan.storage, [&](auto traits) {
    using S = typename decltype(traits)::S;
    if (device_divisor) {
      const int pre = grid_for(positions, kPosThreads);
      prepass_kernel<S><<<pre, kPosThreads, 0, stream>>>(P);
      check_launch("softmax");
      divisor_kernel<<<1, 32, 0, stream>>>(ws, pre, plan.divide, plan.grad_output);
      check_launch("softmax");
      P.scale_ptr = &ws->scale;
    }
    int blocks = 0;
    if (positions > 0) {
      blocks = launch_main<S>(P, stream);
      check_launch("softmax");
    }
    finalize_kernel<S><<<1, 32, 0, stream>>>(ws, blocks, device_divisor, divisor,
                                             plan.split_terms, plan.reduced, plan.labels,
                                             plan.label_kind, plan.label_argument,
                                             plan.channels, plan.has_ignore, plan.ignore);
    check_launch("softmax");
  });
}

}  // namespace xentkit::cuda::detail
