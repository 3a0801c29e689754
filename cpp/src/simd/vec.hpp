#pragma once
// Portable 16-lane vectors (GCC/Clang vector extensions) and the float32 math the fast kernels
// need. The same source is compiled once per instruction set (baseline, AVX2+FMA, AVX-512), so
// every operation here must be plain arithmetic, comparisons, selects and bit casts: the
// compiler maps a 64-byte vector onto one zmm, two ymm or four xmm registers.
//
// Included inside the namespace of one instruction-set build (see simd/softmax_impl.hpp).

// (Its includes are made by kernels_impl.hpp, outside any namespace.)

constexpr int W = 16;  // lanes

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(128)));
typedef int64_t vl __attribute__((vector_size(128)));

inline vf load(const float* p) noexcept {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) noexcept { std::memcpy(p, &v, sizeof v); }
inline vi load_i(const int32_t* p) noexcept {
  vi v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vd load_d(const double* p) noexcept {
  vd v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_d(double* p, vd v) noexcept { std::memcpy(p, &v, sizeof v); }

#if defined(__AVX512F__)
/// The first n lanes of p, the others `fill` (n in [0, W]); nothing past p[n-1] is read.
inline vf load_part(const float* p, int n, float fill) noexcept {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  return (vf)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p);
}
inline void store_part(float* p, vf v, int n) noexcept {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), (__m512)v);
}
#elif defined(__AVX2__)
inline vf load_part(const float* p, int n, float fill) noexcept {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
  const __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx);
  const __m256 f = _mm256_set1_ps(fill);
  const __m256 a = _mm256_blendv_ps(f, _mm256_maskload_ps(p, lo), _mm256_castsi256_ps(lo));
  const __m256 b = _mm256_blendv_ps(f, _mm256_maskload_ps(p + 8, hi), _mm256_castsi256_ps(hi));
  vf v;
  std::memcpy(&v, &a, 32);
  std::memcpy(reinterpret_cast<char*>(&v) + 32, &b, 32);
  return v;
}
inline void store_part(float* p, vf v, int n) noexcept {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 a, b;
  std::memcpy(&a, &v, 32);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx), a);
  _mm256_maskstore_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx), b);
}
#else
inline vf load_part(const float* p, int n, float fill) noexcept {
  float buf[W];
  for (int k = 0; k < W; ++k) buf[k] = k < n ? p[k] : fill;
  vf v;
  std::memcpy(&v, buf, sizeof v);
  return v;
}
inline void store_part(float* p, vf v, int n) noexcept {
  float buf[W];
  std::memcpy(buf, &v, sizeof buf);
  for (int k = 0; k < n; ++k) p[k] = buf[k];
}
#endif

inline vf splat(float a) noexcept { return vf{} + a; }
inline vd splat_d(double a) noexcept { return vd{} + a; }
inline vi splat_i(int32_t a) noexcept { return vi{} + a; }
inline vi iota() noexcept { return vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

/// A float-lane mask as a mask of double lanes.
inline vl wide_mask(vi m) noexcept { return __builtin_convertvector(m, vl); }
inline vd widen(vf v) noexcept { return __builtin_convertvector(v, vd); }
inline vf narrow(vd v) noexcept { return __builtin_convertvector(v, vf); }

/// Lane-wise max that keeps `m` where v is NaN or not larger (the `v > m` rule of the scalar
/// kernels: a NaN never becomes the max).
inline vf max_keep(vf m, vf v) noexcept { return v > m ? v : m; }

// Horizontal reductions as fixed trees (the same order on every call).
#define XK_HALF(v) __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
#define XK_QUARTER(v) __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)
#define XK_PAIR(v) __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)
#define XK_ONE(v) __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)

/// True when any lane of the mask is set.
inline bool any(vi mask) noexcept {
  mask |= XK_HALF(mask);
  mask |= XK_QUARTER(mask);
  mask |= XK_PAIR(mask);
  mask |= XK_ONE(mask);
  return mask[0] != 0;
}

/// Sum of the lanes.
inline double hsum(vd v) noexcept {
  v += XK_HALF(v);
  v += XK_QUARTER(v);
  v += XK_PAIR(v);
  v += XK_ONE(v);
  return v[0];
}

/// Max of the lanes (NaN-free input).
inline float hmax(vf v) noexcept {
  v = max_keep(v, XK_HALF(v));
  v = max_keep(v, XK_QUARTER(v));
  v = max_keep(v, XK_PAIR(v));
  v = max_keep(v, XK_ONE(v));
  return v[0];
}

/// exp(z) for z <= 0 (or NaN) in float32, within 2 ulp of the correctly rounded value for
/// normal results; exp(0) is exactly 1, results below FLT_MIN's range (z < -87.33655) are 0, and
/// NaN stays NaN. Cody-Waite reduction z = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial.
inline vf exp_nonpos(vf z) noexcept {
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf t = z * 1.44269504088896341f + shifter;
  const vf n = t - shifter;
  vf r = z - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * (r * r) + r + 1.0f;
  // 2^n from the integer sitting in the low mantissa bits of t (no float->int conversion).
  const vi bits = ((vi)t - (vi)shifter + 127) << 23;
  const vf res = y * (vf)bits;
  return z < splat(-87.33654f) ? splat(0.0f) : res;
}

/// log(u) for finite u >= 1 in float32 (within 2 ulp): u = 2^k f with f in [sqrt(1/2), sqrt(2)),
/// log f = 2 atanh(s), s = (f - 1) / (f + 1), |s| <= 0.1716.
inline vf log_ge1(vf u) noexcept {
  vi bits = (vi)u;
  vi k = ((bits >> 23) & 0xff) - 127;
  vf f = (vf)((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const vi big = f > splat(1.41421356f);
  f = big ? f * 0.5f : f;
  k = big ? k + 1 : k;
  const vf s = (f - 1.0f) / (f + 1.0f);
  const vf s2 = s * s;
  vf q = splat(2.0f / 11.0f);
  q = q * s2 + 2.0f / 9.0f;
  q = q * s2 + 2.0f / 7.0f;
  q = q * s2 + 2.0f / 5.0f;
  q = q * s2 + 2.0f / 3.0f;
  const vf logf_ = s * 2.0f + s * s2 * q;
  const vf kf = __builtin_convertvector(k, vf);
  return kf * 0.693359375f + (kf * -2.12194440e-4f + logf_);
}

/// log1p(r) for finite r >= 0 in float32, keeping the relative precision of small r:
/// log1p(r) = log(u) * r / (u - 1) with u = 1 + r rounded (r itself when u rounds to 1).
inline vf log1p_nonneg(vf r) noexcept {
  const vf u = r + 1.0f;
  const vf d = u - 1.0f;
  const vf l = log_ge1(u);
  return d == splat(0.0f) ? r : l * (r / d);
}
