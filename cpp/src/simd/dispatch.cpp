// The choice of instruction set for the vectorised kernels.

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "simd/fast.hpp"
#include "xentkit/cpu.hpp"
#include "xentkit/errors.hpp"

namespace xentkit::detail::fast {

#if defined(XENTKIT_SIMD_AVX512)
namespace avx512 { const Kernels* get() noexcept; }
#endif
#if defined(XENTKIT_SIMD_AVX2)
namespace avx2 { const Kernels* get() noexcept; }
#endif
#if defined(XENTKIT_SIMD_BASELINE)
namespace baseline { const Kernels* get() noexcept; }
#endif

namespace {

/// The compiled-in levels this CPU supports, best first; null stands for "scalar".
std::vector<const Kernels*> supported() {
  std::vector<const Kernels*> out;
#if defined(XENTKIT_SIMD_AVX512)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    out.push_back(avx512::get());
  }
#endif
#if defined(XENTKIT_SIMD_AVX2)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(avx2::get());
#endif
#if defined(XENTKIT_SIMD_BASELINE)
  out.push_back(baseline::get());
#endif
  out.push_back(nullptr);
  return out;
}

const std::vector<const Kernels*>& levels() {
  static const std::vector<const Kernels*> all = supported();
  return all;
}

const char* name_of(const Kernels* k) { return k ? k->name : "scalar"; }

/// The level for a name, or false when it is not available ("auto": the best).
bool find(const std::string& name, const Kernels*& out) {
  if (name == "auto") {
    out = levels().front();
    return true;
  }
  for (const Kernels* k : levels()) {
    if (name == name_of(k)) {
      out = k;
      return true;
    }
  }
  return false;
}

const Kernels* initial() {
  const Kernels* k = levels().front();
  if (const char* env = std::getenv("XENTKIT_SIMD")) find(env, k);
  return k;
}

std::atomic<const Kernels*>& current() {
  static std::atomic<const Kernels*> cur{initial()};
  return cur;
}

}  // namespace

const Kernels* kernels() noexcept { return current().load(std::memory_order_relaxed); }

}  // namespace xentkit::detail::fast

namespace xentkit {

std::string simd_level() { return detail::fast::name_of(detail::fast::kernels()); }

std::string simd_levels_available() {
  std::string out;
  for (const auto* k : detail::fast::levels()) {
    if (!out.empty()) out += ", ";
    out += detail::fast::name_of(k);
  }
  return out;
}

void set_simd_level(const std::string& name) {
  const detail::fast::Kernels* k = nullptr;
  if (!detail::fast::find(name, k)) {
    throw value_error("simd level: expected \"auto\" or one of " + simd_levels_available() +
                      ", got \"" + name + "\"");
  }
  detail::fast::current().store(k, std::memory_order_relaxed);
}

}  // namespace xentkit
