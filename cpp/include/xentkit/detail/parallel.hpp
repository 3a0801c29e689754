#pragma once
// Deterministic block-parallel loops for the CPU kernels.
//
// A kernel cuts its work into blocks whose size depends only on the problem (never on the thread
// count), computes one partial result per block, and combines the partials in block order. Threads
// only decide who computes which block, so results are bit-identical for any thread count.

#include <algorithm>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

#include "xentkit/threading.hpp"

namespace xentkit::detail {

/// Below this many elements of work a call stays on the calling thread: starting threads would
/// cost more than they save.
inline constexpr int64_t kParallelThreshold = int64_t{1} << 18;

/// Threads to use for `work` elements cut into `n_blocks` blocks.
inline int threads_for(int64_t work, int64_t n_blocks) {
  if (work < kParallelThreshold || n_blocks < 2) return 1;
  const int64_t n = std::min<int64_t>(get_num_threads(), n_blocks);
  return static_cast<int>(std::max<int64_t>(1, n));
}

/// Calls fn(b) for every b in [0, n_blocks), on `threads` threads each taking a contiguous range.
/// fn must not throw. If a thread cannot be started, its range runs on the calling thread.
template <class Fn>
void parallel_blocks(int64_t n_blocks, int threads, const Fn& fn) {
  if (threads <= 1 || n_blocks <= 1) {
    for (int64_t b = 0; b < n_blocks; ++b) fn(b);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  auto range = [&](int t) {
    const int64_t begin = n_blocks * t / threads;
    const int64_t end = n_blocks * (t + 1) / threads;
    for (int64_t b = begin; b < end; ++b) fn(b);
  };
  for (int t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(range, t);
    } catch (const std::system_error&) {
      range(t);
    }
  }
  range(0);
  for (auto& th : pool) th.join();
}

/// Sums per-block partials in block order.
inline double ordered_sum(const std::vector<double>& partials) {
  double s = 0.0;
  for (double p : partials) s += p;
  return s;
}

}  // namespace xentkit::detail
