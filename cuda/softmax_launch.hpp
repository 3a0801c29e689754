#pragma once
// How cuda/softmax.cu lays a call out on the device: the kernel for a shape, its shared-memory
// budget and the cluster split of long rows. Pure functions of the shape, the element size and a
// device's limits (no CUDA header), so the host compiler checks them in every build
// (tests/cpp/test_cuda_softmax_math.cpp) and the kernels' host side asks them alone.

#include <cstdint>

namespace xentkit::cuda::detail::launch_shape {

inline constexpr int kRowsWarps = 8;                 // warps per block of the warp-per-row kernel
inline constexpr int kBlockThreads = 512;            // threads of the block-per-row kernel
inline constexpr int kPosThreads = 256;              // threads of the positions kernels
inline constexpr int64_t kStageBytes = 96 * 1024;    // largest row staged in one block
inline constexpr int kClusterMax = 8;                // blocks per cluster (the portable limit)
inline constexpr int64_t kClusterStageBytes = 160 * 1024;  // shared memory per cluster block
/// A launch without the opt-in attribute may use this much shared memory, static and dynamic
/// together.
inline constexpr int64_t kDefaultSharedBytes = 48 * 1024;
/// Positions layout: a warp per position when the class axis is at least this long and there are
/// fewer positions than kWarpPositionsMaxPositions (too few threads otherwise, each sweeping a
/// long axis); one thread per position else.
inline constexpr int64_t kWarpPositionsMinChannels = 512;
inline constexpr int64_t kWarpPositionsMaxPositions = 65536;

/// Static shared memory of the block-per-row kernel for a compute type of `compute_bytes`: the
/// double scratch[32] of the constants, and BlockScratch (32 values, 32 int64 indices).
constexpr int64_t block_static_bytes(int compute_bytes) {
  return 32 * 8 + 32 * int64_t{compute_bytes} + 32 * 8;
}

/// Dynamic shared memory of a row of C elements of `elem_bytes` staged in one block.
constexpr int64_t staged_bytes(int64_t C, int elem_bytes) {
  return (C * elem_bytes + 15) / 16 * 16;
}

/// Whether a launch needing `dynamic` bytes besides `static_bytes` needs the opt-in attribute.
constexpr bool needs_opt_in(int64_t dynamic, int64_t static_bytes) {
  return dynamic + static_bytes > kDefaultSharedBytes;
}

/// The largest dynamic shared memory the staged kernel is given on a device whose opt-in limit
/// per block is `optin_bytes` (cudaDevAttrMaxSharedMemoryPerBlockOptin); without the opt-in
/// (refused), what a default launch allows.
constexpr int64_t staged_limit(int64_t optin_bytes, int64_t static_bytes, bool opt_in_granted) {
  const int64_t cap = opt_in_granted ? optin_bytes : kDefaultSharedBytes;
  const int64_t room = cap - static_bytes;
  const int64_t limit = room < kStageBytes ? room : kStageBytes;
  return limit > 0 ? limit / 16 * 16 : 0;
}

enum class Kernel : int {
  positions,       // inner > 1 (or C == 0): one thread per position
  warp_positions,  // inner > 1 with a long class axis: one warp per position
  warp_rows,       // one warp per row, the row in registers
  staged_rows,     // one block per row, the row staged in shared memory
  long_rows,       // longer rows: a cluster on sm_90, else the sweeping block kernel
  sweep_rows,      // one block per row sweeping x in global memory (nll of long rows too)
};

/// The kernel for `positions` = outer * inner positions of C classes (stride inner) of
/// `elem_bytes` storage; `stage_limit` is the device's staged_limit(); `nll` reads x[y] alone and
/// stages nothing.
constexpr Kernel kernel_for(int64_t positions, int64_t C, int64_t inner, int elem_bytes,
                            int64_t stage_limit, bool nll) {
  if (inner > 1 || C == 0) {
    return (inner > 1 && C >= kWarpPositionsMinChannels &&
            positions < kWarpPositionsMaxPositions)
               ? Kernel::warp_positions
               : Kernel::positions;
  }
  if (C <= (elem_bytes == 8 ? 512 : 1024)) return Kernel::warp_rows;
  if (nll) return Kernel::sweep_rows;
  if (staged_bytes(C, elem_bytes) <= stage_limit) return Kernel::staged_rows;
  return Kernel::long_rows;
}

/// Blocks of one cluster and classes per block for a row of C classes (ranks 0: no cluster).
struct ClusterShape {
  int ranks = 0;
  int64_t slice = 0;
};
constexpr ClusterShape cluster_shape(int64_t C, int elem_bytes) {
  const int64_t per_vec = 16 / elem_bytes;
  for (int ranks = 2; ranks <= kClusterMax; ranks *= 2) {
    int64_t slice = (C + ranks - 1) / ranks;
    slice = (slice + per_vec - 1) / per_vec * per_vec;  // slices start 16-byte aligned
    if (slice * elem_bytes <= kClusterStageBytes) return {ranks, slice};
  }
  return {};
}

/// Index of a cluster size 2, 4, 8 in a per-device table.
constexpr int ranks_index(int ranks) { return ranks == 2 ? 0 : ranks == 4 ? 1 : 2; }

}  // namespace xentkit::cuda::detail::launch_shape
