#pragma once
// Deterministic block-parallel loops for the CPU kernels.
//
// A kernel cuts its work into blocks whose size depends only on the problem (never on the thread
// count), computes one partial result per block, and combines the partials in block order. Threads
// only decide who computes which block, so results are bit-identical for any thread count.

#include <algorithm>
#include <cstdint>
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

/// Runs fn(ctx, b) for every b in [0, n_blocks) on up to `threads` threads of the shared pool
/// (the calling thread included). Blocks are taken in any order by any thread; callers store
/// one result per block and combine them in block order. When the pool is busy with another
/// call, or cannot start a worker, the blocks run on the calling thread.
void run_blocks(int64_t n_blocks, int threads, void (*fn)(const void*, int64_t), const void* ctx);

/// Calls fn(b) for every b in [0, n_blocks) on `threads` threads. fn must not throw.
template <class Fn>
void parallel_blocks(int64_t n_blocks, int threads, const Fn& fn) {
  if (threads <= 1 || n_blocks <= 1) {
    for (int64_t b = 0; b < n_blocks; ++b) fn(b);
    return;
  }
  run_blocks(n_blocks, threads,
             [](const void* ctx, int64_t b) { (*static_cast<const Fn*>(ctx))(b); }, &fn);
}

/// One slot per block for partial results: on the stack up to kInline blocks (no allocation for
/// inputs up to a few million elements), on the heap beyond.
template <typename T>
class Partials {
 public:
  static constexpr int64_t kInline = 256;
  explicit Partials(int64_t n) : n_(n) {
    if (n > kInline) heap_.assign(static_cast<size_t>(n), T(0));
    data_ = n > kInline ? heap_.data() : inline_;
    for (int64_t i = 0; i < (n > kInline ? 0 : n); ++i) inline_[i] = T(0);
  }
  Partials(const Partials&) = delete;
  Partials& operator=(const Partials&) = delete;
  T& operator[](int64_t b) noexcept { return data_[b]; }
  /// The sum of the slots in block order.
  T ordered_sum() const noexcept {
    T s = T(0);
    for (int64_t i = 0; i < n_; ++i) s += data_[i];
    return s;
  }

 private:
  int64_t n_;
  T inline_[kInline];
  std::vector<T> heap_;
  T* data_;
};

}  // namespace xentkit::detail
