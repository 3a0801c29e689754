// libFuzzer target over the public CPU entry points of xentkit (xentkit/losses.hpp).
//
// The input bytes choose a function, a value type, a layout (sizes, sometimes negative or
// inconsistent), options (reductions, normalizations, ignored labels, smoothing, loss weights,
// broadcast weights, in-place and null outputs) and the data (values from a table of awkward
// numbers or raw bit patterns, and labels of every supported type).
//
// Accepted outcomes: a result, or one of xentkit's exceptions (xentkit::error). Findings:
//   * a crash, a sanitizer report, or any other exception (it escapes and aborts);
//   * an output that was written although the call threw (outputs carry a sentinel beforehand);
//   * an output element the call should have written that still holds the sentinel;
//   * an input that changed (unless it is the in-place output);
//   * a non-finite result from finite, moderate inputs where the function promises a finite one.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "xentkit/cpu.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/losses.hpp"
#include "xentkit/options.hpp"

namespace {

using xentkit::Normalization;
using xentkit::Reduction;

[[noreturn]] void finding(const char* what, const char* function) {
  std::fprintf(stderr, "xentkit fuzz finding in %s: %s\n", function, what);
  std::abort();
}

/// Reads the fuzz input front to back; past the end everything reads as 0.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(u8()) << (8 * i);
    return v;
  }
  uint64_t u64() { return static_cast<uint64_t>(u32()) | (static_cast<uint64_t>(u32()) << 32); }
  bool empty() const { return pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

/// The sentinel written into outputs before a call: a NaN with a payload that arithmetic never
/// produces (generated NaN values are canonical quiet NaNs, and input NaNs are canonicalized).
template <typename T>
T sentinel();
template <>
float sentinel<float>() {
  const uint32_t bits = 0x7fa5a5a5u;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
template <>
double sentinel<double>() {
  const uint64_t bits = 0x7ff5a5a5a5a5a5a5ull;
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

template <typename T>
bool is_sentinel(T v) {
  const T s = sentinel<T>();
  return std::memcmp(&v, &s, sizeof v) == 0;
}

/// Data values: "tame" inputs are finite and moderate, so every promised-finite result must be
/// finite; "wild" inputs draw from awkward numbers and raw bit patterns.
template <typename T>
T wild_value(Bytes& in) {
  static const double table[] = {0.0,   -0.0,  1.0,     -1.0,   0.5,    1e-45, -1e-45, 1e-300,
                                 88.7,  -88.7, 89.0,    -104.0, 709.0,  -745.0, 1e30,  -1e30,
                                 3e38,  -3e38, 1.7e308, 2.0,    -100.0, 255.0,  1e-7,  0.999999};
  const uint8_t k = in.u8();
  if (k < 200) return static_cast<T>(table[k % (sizeof table / sizeof table[0])]);
  if (k < 215) return std::numeric_limits<T>::infinity();
  if (k < 230) return -std::numeric_limits<T>::infinity();
  if (k < 240) return std::numeric_limits<T>::quiet_NaN();
  T v;
  if constexpr (sizeof(T) == 4) {
    const uint32_t bits = in.u32();
    std::memcpy(&v, &bits, sizeof v);
  } else {
    const uint64_t bits = in.u64();
    std::memcpy(&v, &bits, sizeof v);
  }
  if (std::isnan(v)) v = std::numeric_limits<T>::quiet_NaN();  // no sentinel-like payloads
  return v;
}

template <typename T>
T tame_value(Bytes& in, double scale) {
  return static_cast<T>(static_cast<int8_t>(in.u8()) * scale);
}

struct Layout {
  int64_t outer = 0, channels = 0, inner = 0;
  bool valid = true;  // all sizes >= 0 (buffers can be allocated)
  int64_t positions() const { return outer * inner; }
  int64_t count() const { return outer * channels * inner; }
};

Layout read_layout(Bytes& in) {
  Layout l;
  const uint8_t size_class = in.u8();
  const int64_t cap = (size_class & 0xf) == 0 ? 64 : 9;
  l.outer = in.u8() % cap;
  l.channels = in.u8() % cap;
  l.inner = in.u8() % (cap == 64 ? 16 : 5);
  if ((size_class & 0xf0) == 0xf0) {  // a negative size: must be rejected before any access
    const uint8_t which = in.u8() % 3;
    (which == 0 ? l.outer : which == 1 ? l.channels : l.inner) = -1 - in.u8();
    l.valid = false;
  }
  return l;
}

template <typename T>
struct Ctx {
  Bytes& in;
  bool tame;
  double scale;
  const char* name = "";

  T value() { return tame ? tame_value<T>(in, scale) : wild_value<T>(in); }
  std::vector<T> values(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n > 0 ? n : 0));
    for (auto& x : v) x = value();
    return v;
  }
  /// Probabilities for binary_cross_entropy: in [0, 1] when tame (sometimes exactly 0 or 1).
  std::vector<T> probabilities(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n > 0 ? n : 0));
    for (auto& x : v) {
      if (tame) {
        const uint8_t b = in.u8();
        x = b == 0 ? T(0) : b == 255 ? T(1) : static_cast<T>(b / 255.0);
      } else {
        x = wild_value<T>(in);
      }
    }
    return v;
  }
  std::vector<T> nonnegative(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n > 0 ? n : 0));
    for (auto& x : v) x = tame ? static_cast<T>(in.u8() % 5) : wild_value<T>(in);
    return v;
  }
};

/// An output buffer pre-filled with the sentinel.
template <typename T>
std::vector<T> output(int64_t n) {
  return std::vector<T>(static_cast<size_t>(n > 0 ? n : 0), sentinel<T>());
}

template <typename T>
T* ptr(std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}
template <typename T>
const T* cptr(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

template <typename T>
void expect_untouched(const std::vector<T>& out, const char* function) {
  for (T v : out) {
    if (!is_sentinel(v)) finding("an output was written by a call that threw", function);
  }
}

template <typename T>
void expect_written(const std::vector<T>& out, size_t n, bool must_be_finite,
                    const char* function) {
  if (out.size() < n) finding("output shorter than expected (harness)", function);
  for (size_t i = 0; i < n; ++i) {
    if (is_sentinel(out[i])) finding("an output element was not written", function);
    if (must_be_finite && !std::isfinite(out[i])) {
      finding("a non-finite output from finite, moderate inputs", function);
    }
  }
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// Class labels of type L: in range, the ignored value, or anything (from the bytes).
template <typename L>
std::vector<L> read_labels(Bytes& in, int64_t n, int64_t channels, int64_t ignore, bool in_range_only) {
  std::vector<L> v(static_cast<size_t>(n > 0 ? n : 0));
  for (auto& x : v) {
    const uint8_t k = in.u8();
    if (in_range_only || k < 200) {
      x = channels > 0 ? static_cast<L>(k % channels) : static_cast<L>(ignore);
    } else if (k < 230) {
      x = static_cast<L>(ignore);
    } else if (k < 250) {
      x = static_cast<L>(static_cast<int64_t>(in.u64()));
    } else if constexpr (std::is_floating_point_v<L>) {
      const L specials[] = {std::numeric_limits<L>::quiet_NaN(), std::numeric_limits<L>::infinity(),
                            -std::numeric_limits<L>::infinity(), static_cast<L>(channels) - L(0.5),
                            L(-0.5), L(1e30)};
      x = specials[k % 6];
    } else {
      x = static_cast<L>(channels);
    }
  }
  return v;
}

Reduction read_reduction(Bytes& in) {
  const uint8_t k = in.u8();
  return static_cast<Reduction>(k < 250 ? k % 3 : static_cast<int>(k) - 252);  // -2..3: invalid ones too
}

Normalization read_normalization(Bytes& in) {
  const uint8_t k = in.u8();
  return static_cast<Normalization>(k < 250 ? k % 4 : static_cast<int>(k) - 245);  // 5..10: invalid
}

// ---- one call per function ------------------------------------------------------------------

/// Runs `call`: true when it returned, false when it threw one of xentkit's exceptions (any
/// other exception escapes, and libFuzzer reports it).
template <class Fn>
bool guarded(Fn&& call) {
  try {
    call();
    return true;
  } catch (const xentkit::error&) {
    return false;
  }
}

template <typename T>
void fuzz_sigmoid_layer(Ctx<T>& c, const Layout& l) {
  const char* fn = "sigmoid_cross_entropy_loss";
  const int64_t count = l.valid ? l.count() : 0;
  auto x = c.values(count), t = c.nonnegative(count);
  if (c.tame) {
    for (auto& v : t) v = static_cast<T>(v / T(4));  // soft targets in [0, 1]
  }
  xentkit::SigmoidCrossEntropyLossOptions o;
  const uint8_t k = c.in.u8();
  if (k & 1) o.ignore_label = static_cast<int64_t>(k >> 1) % 3 - 1;
  o.normalization = read_normalization(c.in);
  o.loss_weight = c.tame ? (c.in.u8() % 7) - 3.0 : static_cast<double>(wild_value<double>(c.in));
  const uint8_t mode = c.in.u8() % 3;  // 0: no diff, 1: separate, 2: in place
  auto diff = output<T>(mode == 1 ? count : 0);
  const auto x0 = x, t0 = t;
  T* d = mode == 0 ? nullptr : mode == 1 ? ptr(diff) : ptr(x);
  const int64_t count_arg = l.valid ? count : (l.outer < 0 ? 4 : -1 - static_cast<int64_t>(c.in.u8()));
  T loss = T(0);
  const bool ok = guarded([&] {
    loss = xentkit::sigmoid_cross_entropy_loss<T>(cptr(x), cptr(t), l.outer, count_arg, d, o);
  });
  if (!same_bits(t, t0)) finding("targets modified", fn);
  if (!ok) {
    expect_untouched(diff, fn);
    if (!same_bits(x, x0)) finding("scores modified by a call that threw", fn);
    return;
  }
  if (mode != 2 && !same_bits(x, x0)) finding("scores modified", fn);
  const bool finite = c.tame && std::isfinite(o.loss_weight);
  if (finite && !std::isfinite(loss)) finding("non-finite loss from moderate inputs", fn);
  if (mode == 1) expect_written(diff, static_cast<size_t>(count), finite, fn);
  if (mode == 2) expect_written(x, static_cast<size_t>(count), finite, fn);
}

template <typename T, typename L>
void fuzz_softmax_layer(Ctx<T>& c, const Layout& l) {
  const char* fn = "softmax_with_loss";
  xentkit::SoftmaxWithLossOptions o;
  const uint8_t k = c.in.u8();
  const int64_t ignore = (k >> 1) % 2 ? 255 : -1;
  if (k & 1) o.ignore_label = ignore;
  o.normalization = read_normalization(c.in);
  o.loss_weight = c.tame ? (c.in.u8() % 7) - 3.0 : static_cast<double>(wild_value<double>(c.in));
  const int64_t count = l.valid ? l.count() : 0, positions = l.valid ? l.positions() : 0;
  auto x = c.values(count);
  auto labels = read_labels<L>(c.in, positions, l.channels, ignore, false);
  const uint8_t mode = c.in.u8() % 6;  // bit 0..1: diff none/separate/in place; >= 3: with prob
  const int dmode = mode % 3;
  auto diff = output<T>(dmode == 1 ? count : 0);
  auto prob = output<T>(mode >= 3 ? count : 0);
  const auto x0 = x;
  const auto labels0 = labels;
  T* d = dmode == 0 ? nullptr : dmode == 1 ? ptr(diff) : ptr(x);
  T loss = T(0);
  const bool ok = guarded([&] {
    loss = xentkit::softmax_with_loss<T, L>(cptr(x), cptr(labels), l.outer, l.channels, l.inner, d,
                                            ptr(prob), o);
  });
  if (!same_bits(labels, labels0)) finding("labels modified", fn);
  if (!ok) {
    expect_untouched(diff, fn);
    expect_untouched(prob, fn);
    if (!same_bits(x, x0)) finding("scores modified by a call that threw", fn);
    return;
  }
  if (dmode != 2 && !same_bits(x, x0)) finding("scores modified", fn);
  const bool finite = c.tame && std::isfinite(o.loss_weight);
  if (finite && !std::isfinite(loss)) finding("non-finite loss from moderate inputs", fn);
  const size_t n = static_cast<size_t>(count);
  if (dmode == 1) expect_written(diff, n, finite, fn);
  if (dmode == 2) expect_written(x, n, finite, fn);
  if (mode >= 3) expect_written(prob, n, c.tame, fn);
}

template <typename T>
xentkit::Broadcast<T> read_broadcast(Ctx<T>& c, std::vector<T>& storage, int64_t count) {
  const uint8_t k = c.in.u8();
  if (k % 4 == 0) return {};
  xentkit::Broadcast<T> b;
  b.period = k % 4 == 1 ? 1 : k % 4 == 2 ? 1 + c.in.u8() % 8 : (count > 0 ? count : 1);
  b.stride = 1 + c.in.u8() % 4;
  if (k >= 250) b.stride = static_cast<int64_t>(k) - 251;  // -1..0..: invalid strides too
  storage = c.nonnegative(b.period);
  b.data = storage.data();
  return b;
}

template <typename T>
void fuzz_binary(Ctx<T>& c, const Layout& l, bool logits) {
  const char* fn = logits ? "binary_cross_entropy_with_logits" : "binary_cross_entropy";
  const int64_t count_arg = l.valid ? l.count() : -2;
  const int64_t count = l.valid ? l.count() : 0;
  auto x = logits ? c.values(count) : c.probabilities(count);
  auto t = c.probabilities(count);
  std::vector<T> ws, ps;
  const auto w = read_broadcast(c, ws, count);
  const auto pw = logits ? read_broadcast(c, ps, count) : xentkit::Broadcast<T>{};
  xentkit::BinaryCrossEntropyOptions o;
  o.reduction = read_reduction(c.in);
  o.grad_output = c.tame ? (c.in.u8() % 5) - 2.0 : wild_value<double>(c.in);
  const uint8_t mode = c.in.u8();
  auto loss = output<T>((mode & 1) ? count : 0);
  auto grad = output<T>((mode & 6) == 2 ? count : 0);
  const auto x0 = x, t0 = t, ws0 = ws, ps0 = ps;
  T* g = (mode & 6) == 0 ? nullptr : (mode & 6) == 2 ? ptr(grad) : ptr(x);
  T value = T(0);
  const bool ok = guarded([&] {
    value = logits ? xentkit::binary_cross_entropy_with_logits<T>(cptr(x), cptr(t), count_arg, w,
                                                                  pw, ptr(loss), g, o)
                   : xentkit::binary_cross_entropy<T>(cptr(x), cptr(t), count_arg, w, ptr(loss), g, o);
  });
  if (!same_bits(t, t0) || !same_bits(ws, ws0) || !same_bits(ps, ps0)) finding("inputs modified", fn);
  if (!ok) {
    expect_untouched(loss, fn);
    expect_untouched(grad, fn);
    if (!same_bits(x, x0)) finding("input modified by a call that threw", fn);
    return;
  }
  if (g != ptr(x) && !same_bits(x, x0)) finding("input modified", fn);
  const bool finite = c.tame && std::isfinite(o.grad_output);
  const bool empty_mean = o.reduction == xentkit::Reduction::mean && count == 0;
  if (finite && !empty_mean && !std::isfinite(value)) finding("non-finite loss from moderate inputs", fn);
  if (mode & 1) expect_written(loss, static_cast<size_t>(count), finite, fn);
  if ((mode & 6) == 2) expect_written(grad, static_cast<size_t>(count), finite, fn);
  if ((mode & 6) >= 4) expect_written(x, static_cast<size_t>(count), finite, fn);
}

/// cross_entropy (indices or probabilities) and nll_loss.
template <typename T, typename L>
void fuzz_class(Ctx<T>& c, const Layout& l, int which) {
  const char* fn = which == 0 ? "cross_entropy(indices)" : which == 1 ? "cross_entropy(probabilities)"
                                                                      : "nll_loss";
  const int64_t count = l.valid ? l.count() : 0, positions = l.valid ? l.positions() : 0;
  const uint8_t k = c.in.u8();
  const int64_t ignore = k % 3 == 0 ? -100 : k % 3 == 1 ? 0 : static_cast<int64_t>(c.in.u64());
  auto x = c.values(count);
  auto labels = read_labels<L>(c.in, which == 1 ? 0 : positions, l.channels, ignore, false);
  auto q = which == 1 ? c.probabilities(count) : std::vector<T>{};
  std::vector<T> weight;
  if (c.in.u8() & 1) weight = c.nonnegative(l.channels > 0 ? l.channels : 0);
  const T* wptr = cptr(weight);
  xentkit::Reduction red = read_reduction(c.in);
  const double eps = c.tame ? (static_cast<int>(c.in.u8() % 15) - 2) / 10.0  // -0.2..1.2
                            : wild_value<double>(c.in);
  const double go = c.tame ? (c.in.u8() % 5) - 2.0 : wild_value<double>(c.in);
  const uint8_t mode = c.in.u8();
  auto loss = output<T>((mode & 1) ? positions : 0);
  auto grad = output<T>((mode & 6) == 2 ? count : 0);
  const auto x0 = x;
  const auto labels0 = labels;
  const auto q0 = q, w0 = weight;
  T* g = (mode & 6) == 0 ? nullptr : (mode & 6) == 2 ? ptr(grad) : ptr(x);
  T value = T(0);
  const bool ok = guarded([&] {
    if (which == 0) {
      xentkit::CrossEntropyOptions o;
      o.ignore_index = ignore;
      o.reduction = red;
      o.label_smoothing = eps;
      o.grad_output = go;
      value = xentkit::cross_entropy<T, L>(cptr(x), cptr(labels), l.outer, l.channels, l.inner,
                                           wptr, ptr(loss), g, o);
    } else if (which == 1) {
      xentkit::CrossEntropyOptions o;
      o.reduction = red;
      o.label_smoothing = eps;
      o.grad_output = go;
      value = xentkit::cross_entropy<T>(cptr(x), cptr(q), l.outer, l.channels, l.inner, wptr,
                                        ptr(loss), g, o);
    } else {
      xentkit::NllLossOptions o;
      o.ignore_index = ignore;
      o.reduction = red;
      o.grad_output = go;
      value = xentkit::nll_loss<T, L>(cptr(x), cptr(labels), l.outer, l.channels, l.inner, wptr,
                                      ptr(loss), g, o);
    }
  });
  if (!same_bits(labels, labels0) || !same_bits(q, q0) || !same_bits(weight, w0)) finding("inputs modified", fn);
  if (!ok) {
    expect_untouched(loss, fn);
    expect_untouched(grad, fn);
    if (!same_bits(x, x0)) finding("input modified by a call that threw", fn);
    return;
  }
  if (g != ptr(x) && !same_bits(x, x0)) finding("input modified", fn);
  // The mean divides by the weight sum of the scored positions (indices) or by the position
  // count (probabilities): 0 there gives NaN or inf, as PyTorch.
  double divisor = 0.0;
  if (which == 1) {  // N*L positions; PyTorch divides numel / C, so 0 without classes
    divisor = l.channels == 0 ? 0.0 : static_cast<double>(positions);
  } else {
    for (int64_t i = 0; i < positions; ++i) {
      const int64_t y = static_cast<int64_t>(labels[static_cast<size_t>(i)]);
      if (y == ignore) continue;
      if (y < 0 || y >= l.channels) finding("an out-of-range class index was accepted", fn);
      divisor += wptr ? static_cast<double>(wptr[y]) : 1.0;
    }
  }
  const bool finite = c.tame && std::isfinite(go);
  // A mean over a zero divisor is NaN or +-inf, and so is its gradient (as in PyTorch).
  const bool zero_mean = red == xentkit::Reduction::mean && divisor == 0.0;
  if (finite && !zero_mean && !std::isfinite(value)) finding("non-finite loss from moderate inputs", fn);
  if (mode & 1) expect_written(loss, static_cast<size_t>(positions), finite, fn);
  if ((mode & 6) == 2) expect_written(grad, static_cast<size_t>(count), finite && !zero_mean, fn);
  if ((mode & 6) >= 4) expect_written(x, static_cast<size_t>(count), finite && !zero_mean, fn);
}

template <typename T>
void fuzz_softmax(Ctx<T>& c, const Layout& l, bool log) {
  const char* fn = log ? "log_softmax" : "softmax";
  const int64_t count = l.valid ? l.count() : 0;
  auto x = c.values(count);
  auto out = output<T>(count);
  const auto x0 = x;
  const bool ok = guarded([&] {
    if (log) {
      xentkit::log_softmax<T>(cptr(x), l.outer, l.channels, l.inner, ptr(out));
    } else {
      xentkit::softmax<T>(cptr(x), l.outer, l.channels, l.inner, ptr(out));
    }
  });
  if (!same_bits(x, x0)) finding("input modified", fn);
  if (!ok) {
    expect_untouched(out, fn);
    return;
  }
  expect_written(out, static_cast<size_t>(count), c.tame, fn);
}

template <typename T, typename L>
void fuzz_tf(Ctx<T>& c, const Layout& l, int which) {
  const char* fn = which == 0 ? "sigmoid_cross_entropy_with_logits"
                 : which == 1 ? "softmax_cross_entropy_with_logits"
                              : "sparse_softmax_cross_entropy_with_logits";
  const int64_t count = l.valid ? l.count() : 0;
  const int64_t rows = l.valid ? (which == 2 ? l.outer * l.inner : l.positions()) : 0;
  auto x = c.values(count);
  auto z = which == 2 ? std::vector<T>{} : c.probabilities(count);
  auto labels = read_labels<L>(c.in, which == 2 ? rows : 0, l.channels, 0, false);
  const uint8_t mode = c.in.u8();
  const int64_t nloss = which == 0 ? count : rows;
  auto loss = output<T>(nloss);
  auto grad = output<T>((mode & 3) == 1 ? count : 0);
  const auto x0 = x, z0 = z;
  const auto labels0 = labels;
  T* g = (mode & 3) == 0 ? nullptr : (mode & 3) == 1 ? ptr(grad) : ptr(x);
  const bool ok = guarded([&] {
    if (which == 0) {
      xentkit::sigmoid_cross_entropy_with_logits<T>(cptr(z), cptr(x), l.valid ? count : l.outer,
                                                    ptr(loss), g);
    } else if (which == 1) {
      xentkit::softmax_cross_entropy_with_logits<T>(cptr(z), cptr(x), l.outer, l.channels, l.inner,
                                                    ptr(loss), g);
    } else {
      // Rows of `channels` logits, class axis last (inner is folded into the rows).
      xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(
          cptr(labels), cptr(x), l.valid ? rows : l.outer, l.channels, ptr(loss), g);
    }
  });
  if (!same_bits(z, z0) || !same_bits(labels, labels0)) finding("labels modified", fn);
  if (!ok) {
    expect_untouched(loss, fn);
    expect_untouched(grad, fn);
    if (!same_bits(x, x0)) finding("logits modified by a call that threw", fn);
    return;
  }
  if (g != ptr(x) && !same_bits(x, x0)) finding("logits modified", fn);
  expect_written(loss, static_cast<size_t>(nloss), c.tame, fn);
  if ((mode & 3) == 1) expect_written(grad, static_cast<size_t>(count), c.tame, fn);
  if ((mode & 3) >= 2) expect_written(x, static_cast<size_t>(count), c.tame, fn);
}

template <typename T, typename L>
void dispatch(Bytes& in, uint8_t function, bool tame, double scale) {
  Ctx<T> c{in, tame, scale};
  const Layout l = read_layout(in);
  switch (function % 12) {
    case 0: fuzz_sigmoid_layer<T>(c, l); break;
    case 1: fuzz_softmax_layer<T, L>(c, l); break;
    case 2: fuzz_binary<T>(c, l, false); break;
    case 3: fuzz_binary<T>(c, l, true); break;
    case 4: fuzz_class<T, L>(c, l, 0); break;
    case 5: fuzz_class<T, L>(c, l, 1); break;
    case 6: fuzz_class<T, L>(c, l, 2); break;
    case 7: fuzz_softmax<T>(c, l, true); break;
    case 8: fuzz_softmax<T>(c, l, false); break;
    case 9: fuzz_tf<T, L>(c, l, 0); break;
    case 10: fuzz_tf<T, L>(c, l, 1); break;
    default: fuzz_tf<T, L>(c, l, 2); break;
  }
}

/// Picks the label type. Floating label types exist only for the Caffe softmax layer; the
/// class-index functions use an integer type instead.
template <typename T>
void with_label_type(Bytes& in, uint8_t function, uint8_t label_type, bool tame, double scale) {
  const bool caffe = function % 12 == 1;
  switch (label_type % (caffe ? 10 : 8)) {
    case 0: dispatch<T, int8_t>(in, function, tame, scale); break;
    case 1: dispatch<T, int16_t>(in, function, tame, scale); break;
    case 2: dispatch<T, int32_t>(in, function, tame, scale); break;
    case 3: dispatch<T, int64_t>(in, function, tame, scale); break;
    case 4: dispatch<T, uint8_t>(in, function, tame, scale); break;
    case 5: dispatch<T, uint16_t>(in, function, tame, scale); break;
    case 6: dispatch<T, uint32_t>(in, function, tame, scale); break;
    case 7: dispatch<T, uint64_t>(in, function, tame, scale); break;
    case 8: {  // floating labels: the Caffe layer only
      Ctx<T> c{in, tame, scale};
      fuzz_softmax_layer<T, float>(c, read_layout(in));
      break;
    }
    default: {
      Ctx<T> c{in, tame, scale};
      fuzz_softmax_layer<T, double>(c, read_layout(in));
      break;
    }
  }
}

}  // namespace

/// The instruction-set levels this build and CPU run ("avx512", "avx2", "baseline", "scalar").
static const std::vector<std::string>& simd_levels() {
  static const std::vector<std::string> levels = [] {
    std::vector<std::string> out;
    const std::string all = xentkit::simd_levels_available();
    size_t start = 0;
    while (start <= all.size()) {
      const size_t comma = all.find(", ", start);
      out.push_back(all.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 2;
    }
    return out;
  }();
  return levels;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const uint8_t function = in.u8();
  const uint8_t flags = in.u8();
  // Bits 4-5 pick the instruction-set level, so every vector kernel and the scalar ones are fuzzed.
  const auto& levels = simd_levels();
  xentkit::set_simd_level(levels[((flags >> 4) & 3u) % levels.size()]);
  const uint8_t label_type = in.u8();
  const bool tame = (flags & 1) == 0;
  static const double scales[] = {0.01, 0.25, 1.0, 100.0};
  const double scale = scales[(flags >> 2) & 3];
  if (flags & 2) {
    with_label_type<double>(in, function, label_type, tame, scale);
  } else {
    with_label_type<float>(in, function, label_type, tame, scale);
  }
  return 0;
}
