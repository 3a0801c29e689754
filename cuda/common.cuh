#pragma once
// Device building blocks shared by the CUDA kernel families: element storage, label reading,
// deterministic block reductions and the error record. Device code only (nvcc).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device_plan.hpp"
#include "xentkit/detail/labels.hpp"

namespace xentkit::cuda::detail {

// ---- storage: S is the element type in memory, R the type it is computed in -------------------

template <Storage K> struct StorageTraits;
template <> struct StorageTraits<Storage::f32> { using S = float; using R = float; };
template <> struct StorageTraits<Storage::f64> { using S = double; using R = double; };
template <> struct StorageTraits<Storage::f16> { using S = __half; using R = float; };
template <> struct StorageTraits<Storage::bf16> { using S = __nv_bfloat16; using R = float; };

__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }

/// Rounds a float or double result to the storage type (to nearest, ties to even).
template <typename S> __device__ __forceinline__ S from_double(double v);
template <> __device__ __forceinline__ float from_double<float>(double v) {
  return static_cast<float>(v);
}
template <> __device__ __forceinline__ double from_double<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_double<__half>(double v) {
  return __double2half(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __double2bfloat16(v);
}
template <typename S> __device__ __forceinline__ S from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_float<double>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

/// Calls f(StorageTraits<K>{}) for the plan's storage type (one instantiation per type).
template <typename F>
void with_storage(Storage k, F&& f) {
  switch (k) {
    case Storage::f32: f(StorageTraits<Storage::f32>{}); break;
    case Storage::f64: f(StorageTraits<Storage::f64>{}); break;
    case Storage::f16: f(StorageTraits<Storage::f16>{}); break;
    case Storage::bf16: f(StorageTraits<Storage::bf16>{}); break;
  }
}

// ---- labels: read at run time by kind (one load per position, so the switch costs nothing) ----

/// The class of labels[i]: an index in [0, C), xentkit::detail::kIgnored or kInvalid.
__device__ __forceinline__ int64_t read_class(const void* labels, LabelKind kind, int64_t i,
                                              int64_t channels, bool has_ignore, int64_t ignore) {
  using xentkit::detail::classify_label;
  switch (kind) {
    case LabelKind::i8: return classify_label(static_cast<const int8_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::i16: return classify_label(static_cast<const int16_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::i32: return classify_label(static_cast<const int32_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::i64: return classify_label(static_cast<const int64_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::u8: return classify_label(static_cast<const uint8_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::u16: return classify_label(static_cast<const uint16_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::u32: return classify_label(static_cast<const uint32_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::u64: return classify_label(static_cast<const uint64_t*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::f32: return classify_label(static_cast<const float*>(labels)[i], channels, has_ignore, ignore);
    case LabelKind::f64: return classify_label(static_cast<const double*>(labels)[i], channels, has_ignore, ignore);
  }
  return xentkit::detail::kInvalid;
}

/// Stores labels[i] into the error record: its bits widened to 64 and its value as a double.
__device__ inline void record_label(Workspace* ws, const void* labels, LabelKind kind, int64_t i) {
  int64_t si = 0;
  uint64_t ui = 0;
  double d = 0.0;
  bool is_signed = true, is_float = false;
  switch (kind) {
    case LabelKind::i8: si = static_cast<const int8_t*>(labels)[i]; break;
    case LabelKind::i16: si = static_cast<const int16_t*>(labels)[i]; break;
    case LabelKind::i32: si = static_cast<const int32_t*>(labels)[i]; break;
    case LabelKind::i64: si = static_cast<const int64_t*>(labels)[i]; break;
    case LabelKind::u8: ui = static_cast<const uint8_t*>(labels)[i]; is_signed = false; break;
    case LabelKind::u16: ui = static_cast<const uint16_t*>(labels)[i]; is_signed = false; break;
    case LabelKind::u32: ui = static_cast<const uint32_t*>(labels)[i]; is_signed = false; break;
    case LabelKind::u64: ui = static_cast<const uint64_t*>(labels)[i]; is_signed = false; break;
    case LabelKind::f32: d = static_cast<const float*>(labels)[i]; is_float = true; break;
    case LabelKind::f64: d = static_cast<const double*>(labels)[i]; is_float = true; break;
  }
  if (is_float) {
    ws->raw = static_cast<uint64_t>(__double_as_longlong(d));
    ws->value = d;
  } else if (is_signed) {
    ws->raw = static_cast<uint64_t>(si);
    ws->value = static_cast<double>(si);
  } else {
    ws->raw = ui;
    ws->value = static_cast<double>(ui);
  }
  ws->label_kind = static_cast<int32_t>(kind);
}

/// Notes element i as bad; the smallest index wins (an integer atomic: deterministic).
__device__ __forceinline__ void flag_error(Workspace* ws, int64_t i) {
  atomicMax(&ws->error, ~static_cast<unsigned long long>(i));
}

/// Index of the first bad element, or -1.
__device__ __forceinline__ int64_t first_error(const Workspace* ws) {
  const unsigned long long e = *const_cast<volatile unsigned long long*>(&ws->error);
  return e == 0ULL ? -1 : static_cast<int64_t>(~e);
}

// ---- deterministic reductions: a fixed tree, independent of timing ----------------------------

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename V>
__device__ __forceinline__ V warp_max(V v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
/// `scratch` holds 32 values of V in shared memory; the block must call it uniformly.
template <typename V>
__device__ V block_sum(V v, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : V(0);
  return warp_sum(v);
}

/// Throws unavailable_error naming the CUDA error after a launch (host side).
void check_launch(const char* what);

}  // namespace xentkit::cuda::detail
