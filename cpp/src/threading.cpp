#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include "xentkit/errors.hpp"
#include "xentkit/threading.hpp"

namespace xentkit {
namespace {

int initial_threads() noexcept {
  if (const char* env = std::getenv("XENTKIT_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) return static_cast<int>(n);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::atomic<int>& thread_count() noexcept {
  static std::atomic<int> count{initial_threads()};
  return count;
}

}  // namespace

int get_num_threads() noexcept { return thread_count().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1) {
    throw value_error("num_threads: expected an integer >= 1, got " + std::to_string(n));
  }
  thread_count().store(n, std::memory_order_relaxed);
}

}  // namespace xentkit
