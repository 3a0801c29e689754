#pragma once
// Thread count of the CPU kernels. Results are bit-identical for every thread count: work is cut
// into blocks that depend only on the problem, and partial sums are combined in block order.

namespace xentkit {

/// Threads used by the CPU kernels for large inputs. Starts at the XENTKIT_NUM_THREADS
/// environment variable when set to a positive integer, else at the number of hardware threads.
int get_num_threads() noexcept;

/// Sets the thread count (n >= 1); throws value_error otherwise. Safe while calls are running:
/// a call reads the count once when it starts.
void set_num_threads(int n);

}  // namespace xentkit
