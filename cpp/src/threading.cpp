// The thread count and the shared worker pool of the CPU kernels.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define XENTKIT_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define XENTKIT_PAUSE() __asm__ __volatile__("yield")
#else
#define XENTKIT_PAUSE() ((void)0)
#endif

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define XENTKIT_HAVE_ATFORK 1
#endif

#include "xentkit/detail/parallel.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/threading.hpp"

namespace xentkit {
namespace {

int available_cpus() noexcept {
#if defined(__linux__)
  // The CPUs this process may run on (taskset, cgroup cpusets), not all the machine has.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

int initial_threads() noexcept {
  if (const char* env = std::getenv("XENTKIT_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) return static_cast<int>(n);
  }
  return available_cpus();
}

std::atomic<int>& thread_count() noexcept {
  static std::atomic<int> count{initial_threads()};
  return count;
}

/// True once done() holds, polling for up to `us` microseconds: a few polls a pause apart, then
/// polls that yield the CPU in between (so that a thread sharing this CPU, as when there are
/// more threads than CPUs, runs instead of waiting for the poller's time slice to end).
template <typename Done>
bool spin_until(Done done, int us) noexcept {
  for (int i = 0; i < 64; ++i) {
    if (done()) return true;
    XENTKIT_PAUSE();
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (;;) {
    if (done()) return true;
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() >= end) return done();
  }
}

/// Workers that sleep between calls. One call at a time uses them (a second concurrent call
/// runs on its own thread); workers are started when a call first asks for them and live until
/// the process ends. A worker polls for the next call for kSpinMicros after each one before it
/// sleeps, and the calling thread polls for its helpers as long before it sleeps: waking a
/// sleeping thread costs 50-200 us on a virtual machine, as much as a whole call of a few
/// hundred thousand elements.
class Pool {
  static constexpr int kSpinMicros = 1000;

 public:
  void run(int64_t n_blocks, int threads, void (*fn)(const void*, int64_t), const void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) {
      for (int64_t b = 0; b < n_blocks; ++b) fn(ctx, b);
      return;
    }
    grow(threads - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = fn;
      ctx_ = ctx;
      n_blocks_ = n_blocks;
      next_.store(0, std::memory_order_relaxed);
      helpers_ = std::min<int>(threads - 1, static_cast<int>(workers_));
      pending_ = helpers_;
      ++generation_;
    }
    wake_.notify_all();
    take(fn, ctx, n_blocks);
    if (spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; }, kSpinMicros)) {
      return;
    }
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
  }

 private:
  void take(void (*fn)(const void*, int64_t), const void* ctx, int64_t n_blocks) {
    for (int64_t b = next_.fetch_add(1, std::memory_order_relaxed); b < n_blocks;
         b = next_.fetch_add(1, std::memory_order_relaxed)) {
      fn(ctx, b);
    }
  }

  void grow(int wanted) {
    while (static_cast<int>(workers_) < wanted) {
      const int index = static_cast<int>(workers_);
      try {
        std::thread(&Pool::work, this, index).detach();
      } catch (const std::system_error&) {
        return;  // run with the workers there are
      }
      ++workers_;
    }
  }

  void work(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      if (generation_.load(std::memory_order_relaxed) == seen) {
        lk.unlock();
        spin_until([&] { return generation_.load(std::memory_order_relaxed) != seen; },
                   kSpinMicros);
        lk.lock();
      }
      wake_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
      seen = generation_.load(std::memory_order_relaxed);
      if (index >= helpers_) continue;
      const auto fn = fn_;
      const void* ctx = ctx_;
      const int64_t n = n_blocks_;
      lk.unlock();
      take(fn, ctx, n);
      lk.lock();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) done_.notify_one();
    }
  }

  std::mutex busy_;                 // held by the call using the workers
  std::mutex m_;                    // guards the fields below
  std::condition_variable wake_, done_;
  size_t workers_ = 0;              // started workers (only the busy_ holder changes it)
  // Changed under m_ only; atomic so that spinning threads may poll them without it.
  std::atomic<uint64_t> generation_{0};  // one per call
  int helpers_ = 0;                      // workers taking part in the current call
  std::atomic<int> pending_{0};          // of those, still running
  void (*fn_)(const void*, int64_t) = nullptr;
  const void* ctx_ = nullptr;
  int64_t n_blocks_ = 0;
  std::atomic<int64_t> next_{0};
};

// The pool is never destroyed (its workers may sleep in it at exit); a forked child, which has
// none of its parent's workers, starts a fresh one.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_init;

#if defined(XENTKIT_HAVE_ATFORK)
void forget_pool_in_child() { g_pool.store(nullptr, std::memory_order_relaxed); }
#endif

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lk(g_pool_init);
  p = g_pool.load(std::memory_order_relaxed);
  if (!p) {
#if defined(XENTKIT_HAVE_ATFORK)
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, forget_pool_in_child);
      return true;
    }();
    (void)registered;
#endif
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

int get_num_threads() noexcept { return thread_count().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1) {
    throw value_error("num_threads: expected an integer >= 1, got " + std::to_string(n));
  }
  thread_count().store(n, std::memory_order_relaxed);
}

namespace detail {

void run_blocks(int64_t n_blocks, int threads, void (*fn)(const void*, int64_t),
                const void* ctx) {
  pool().run(n_blocks, threads, fn, ctx);
}

}  // namespace detail
}  // namespace xentkit
