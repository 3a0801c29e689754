#pragma once
// The device entry points of xentkit::cuda as the bindings call them: pointers and stream handles
// as integers, element types as small codes (see _device.py's VALUE_CODES and LABEL_CODES), one
// switch to the template instantiation. Everything throws what xentkit::cuda throws.

#include <cstddef>
#include <cstdint>

#include "xentkit/cuda.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/options.hpp"

namespace xk_device {

using std::uintptr_t;
namespace xc = xentkit::cuda;

template <typename T>
struct Tag {
  using type = T;
};

// Value codes: 0 float16, 1 bfloat16, 2 float32, 3 float64.
template <typename F>
void with_value(int code, F&& f) {
  switch (code) {
    case 0: f(Tag<xentkit::half>{}); return;
    case 1: f(Tag<xentkit::bfloat16>{}); return;
    case 2: f(Tag<float>{}); return;
    case 3: f(Tag<double>{}); return;
    default: throw xentkit::type_error("xentkit: unsupported device value type code");
  }
}

// Index codes: 10 int8, 11 int16, 12 int32, 13 int64, 14 uint8, 15 uint16, 16 uint32, 17 uint64.
template <typename F>
void with_index(int code, F&& f) {
  switch (code) {
    case 10: f(Tag<int8_t>{}); return;
    case 11: f(Tag<int16_t>{}); return;
    case 12: f(Tag<int32_t>{}); return;
    case 13: f(Tag<int64_t>{}); return;
    case 14: f(Tag<uint8_t>{}); return;
    case 15: f(Tag<uint16_t>{}); return;
    case 16: f(Tag<uint32_t>{}); return;
    case 17: f(Tag<uint64_t>{}); return;
    default: throw xentkit::type_error("xentkit: unsupported device label type code");
  }
}

// Caffe labels: the index codes, or 2 float32 / 3 float64 (truncated toward zero).
template <typename F>
void with_label(int code, F&& f) {
  switch (code) {
    case 2: f(Tag<float>{}); return;
    case 3: f(Tag<double>{}); return;
    default: with_index(code, static_cast<F&&>(f));
  }
}

template <typename T>
inline const T* in(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
inline T* out(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
inline xc::stream_t stream_of(uintptr_t s) { return reinterpret_cast<xc::stream_t>(s); }
inline xc::Launch launch_of(uintptr_t workspace, uintptr_t stream) {
  xc::Launch l;
  l.workspace = reinterpret_cast<void*>(workspace);
  l.stream = stream_of(stream);
  return l;
}
template <typename T>
inline xentkit::Broadcast<T> broadcast(uintptr_t data, int64_t stride, int64_t period) {
  xentkit::Broadcast<T> b;
  b.data = in<T>(data);
  b.stride = stride;
  b.period = period;
  return b;
}

// ---- memory and streams ----------------------------------------------------------------------

inline std::size_t workspace_bytes() { return xc::kWorkspaceBytes; }
inline uintptr_t allocate(std::size_t bytes, uintptr_t stream) {
  return reinterpret_cast<uintptr_t>(xc::allocate(bytes, stream_of(stream)));
}
/// Frees on `stream` with `device` current (restored after); never throws.
inline void release(int device, uintptr_t ptr, uintptr_t stream) noexcept {
  if (ptr == 0) return;
  try {
    const int previous = xc::current_device();
    if (previous != device) xc::set_device(device);
    xc::release(reinterpret_cast<void*>(ptr), stream_of(stream));
    if (previous != device) xc::set_device(previous);
  } catch (...) {
  }
}
inline int device_of(uintptr_t ptr) { return xc::device_of(reinterpret_cast<const void*>(ptr)); }
inline int current_device() { return xc::current_device(); }
inline void set_device(int device) { xc::set_device(device); }
inline void stream_wait(uintptr_t waiter, uintptr_t producer) {
  xc::stream_wait(stream_of(waiter), stream_of(producer));
}
inline void synchronize(uintptr_t stream) { xc::synchronize(stream_of(stream)); }
inline uintptr_t record_event(uintptr_t stream) {
  return reinterpret_cast<uintptr_t>(xc::record_event(stream_of(stream)));
}
inline bool event_done(uintptr_t event) { return xc::event_done(reinterpret_cast<void*>(event)); }
inline void destroy_event(uintptr_t event) noexcept {
  xc::destroy_event(reinterpret_cast<void*>(event));
}
inline const char* kernel_image_problem() noexcept { return xc::kernel_image_problem(); }
inline void check(uintptr_t workspace, uintptr_t stream) { xc::check(launch_of(workspace, stream)); }

// ---- Caffe ----------------------------------------------------------------------------------

inline void sigmoid_cross_entropy_loss(int t, uintptr_t scores, uintptr_t targets, int64_t outer,
                                       int64_t count, uintptr_t diff, uintptr_t loss,
                                       const xentkit::SigmoidCrossEntropyLossOptions& o,
                                       uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::sigmoid_cross_entropy_loss<T>(in<T>(scores), in<T>(targets), outer, count, out<T>(diff),
                                      out<T>(loss), o, launch_of(ws, stream));
  });
}

inline void softmax_with_loss(int t, int l, uintptr_t scores, uintptr_t labels, int64_t outer,
                              int64_t channels, int64_t inner, uintptr_t diff, uintptr_t prob,
                              uintptr_t loss, const xentkit::SoftmaxWithLossOptions& o,
                              uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_label(l, [&](auto ltag) {
      using L = typename decltype(ltag)::type;
      xc::softmax_with_loss<T, L>(in<T>(scores), in<L>(labels), outer, channels, inner,
                                  out<T>(diff), out<T>(prob), out<T>(loss), o,
                                  launch_of(ws, stream));
    });
  });
}

// ---- PyTorch --------------------------------------------------------------------------------

inline void binary_cross_entropy(int t, uintptr_t input, uintptr_t target, int64_t count,
                                 uintptr_t w, int64_t ws_, int64_t wp, uintptr_t loss,
                                 uintptr_t grad, uintptr_t reduced,
                                 const xentkit::BinaryCrossEntropyOptions& o, uintptr_t ws,
                                 uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::binary_cross_entropy<T>(in<T>(input), in<T>(target), count, broadcast<T>(w, ws_, wp),
                                out<T>(loss), out<T>(grad), out<T>(reduced), o,
                                launch_of(ws, stream));
  });
}

inline void binary_cross_entropy_with_logits(int t, uintptr_t input, uintptr_t target,
                                             int64_t count, uintptr_t w, int64_t ws_, int64_t wp,
                                             uintptr_t pw, int64_t ps, int64_t pp, uintptr_t loss,
                                             uintptr_t grad, uintptr_t reduced,
                                             const xentkit::BinaryCrossEntropyOptions& o,
                                             uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::binary_cross_entropy_with_logits<T>(in<T>(input), in<T>(target), count,
                                            broadcast<T>(w, ws_, wp), broadcast<T>(pw, ps, pp),
                                            out<T>(loss), out<T>(grad), out<T>(reduced), o,
                                            launch_of(ws, stream));
  });
}

inline void cross_entropy_indices(int t, int l, uintptr_t input, uintptr_t target,
                                  int64_t outer, int64_t channels, int64_t inner,
                                  uintptr_t weight, uintptr_t loss, uintptr_t grad,
                                  uintptr_t reduced, const xentkit::CrossEntropyOptions& o,
                                  uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_index(l, [&](auto ltag) {
      using L = typename decltype(ltag)::type;
      xc::cross_entropy<T, L>(in<T>(input), in<L>(target), outer, channels, inner, in<T>(weight),
                              out<T>(loss), out<T>(grad), out<T>(reduced), o,
                              launch_of(ws, stream));
    });
  });
}

inline void cross_entropy_probabilities(int t, uintptr_t input, uintptr_t target, int64_t outer,
                                        int64_t channels, int64_t inner, uintptr_t weight,
                                        uintptr_t loss, uintptr_t grad, uintptr_t reduced,
                                        const xentkit::CrossEntropyOptions& o, uintptr_t ws,
                                        uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::cross_entropy<T>(in<T>(input), in<T>(target), outer, channels, inner, in<T>(weight),
                         out<T>(loss), out<T>(grad), out<T>(reduced), o, launch_of(ws, stream));
  });
}

inline void nll_loss(int t, int l, uintptr_t input, uintptr_t target, int64_t outer,
                     int64_t channels, int64_t inner, uintptr_t weight, uintptr_t loss,
                     uintptr_t grad, uintptr_t reduced, const xentkit::NllLossOptions& o,
                     uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_index(l, [&](auto ltag) {
      using L = typename decltype(ltag)::type;
      xc::nll_loss<T, L>(in<T>(input), in<L>(target), outer, channels, inner, in<T>(weight),
                         out<T>(loss), out<T>(grad), out<T>(reduced), o, launch_of(ws, stream));
    });
  });
}

inline void log_softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                        uintptr_t result, uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::log_softmax<T>(in<T>(input), outer, channels, inner, out<T>(result),
                       launch_of(ws, stream));
  });
}

inline void softmax(int t, uintptr_t input, int64_t outer, int64_t channels, int64_t inner,
                    uintptr_t result, uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::softmax<T>(in<T>(input), outer, channels, inner, out<T>(result), launch_of(ws, stream));
  });
}

// ---- TensorFlow -----------------------------------------------------------------------------

inline void sigmoid_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                              int64_t count, uintptr_t loss, uintptr_t grad,
                                              uintptr_t ws, uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::sigmoid_cross_entropy_with_logits<T>(in<T>(labels), in<T>(logits), count, out<T>(loss),
                                             out<T>(grad), launch_of(ws, stream));
  });
}

inline void softmax_cross_entropy_with_logits(int t, uintptr_t labels, uintptr_t logits,
                                              int64_t outer, int64_t channels, int64_t inner,
                                              uintptr_t loss, uintptr_t grad, uintptr_t ws,
                                              uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xc::softmax_cross_entropy_with_logits<T>(in<T>(labels), in<T>(logits), outer, channels,
                                             inner, out<T>(loss), out<T>(grad),
                                             launch_of(ws, stream));
  });
}

inline void sparse_softmax_cross_entropy_with_logits(int t, int l, uintptr_t labels,
                                                     uintptr_t logits, int64_t rows,
                                                     int64_t channels, uintptr_t loss,
                                                     uintptr_t grad, uintptr_t ws,
                                                     uintptr_t stream) {
  with_value(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_index(l, [&](auto ltag) {
      using L = typename decltype(ltag)::type;
      xc::sparse_softmax_cross_entropy_with_logits<T, L>(in<L>(labels), in<T>(logits), rows,
                                                         channels, out<T>(loss), out<T>(grad),
                                                         launch_of(ws, stream));
    });
  });
}

}  // namespace xk_device
