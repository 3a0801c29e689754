#pragma once
// Portable 16-lane vectors and the float32 math the fast kernels need. The same source is
// compiled once per instruction set (baseline, AVX2+FMA, AVX-512): a 16-lane vector is held as
// parts of the target's native width (one zmm, two ymm or four xmm registers), each part a
// GCC/Clang vector-extension value, so every operation, comparisons and selects included, maps
// to native instructions (a 64-byte vector-extension comparison would be split into scalars on a
// target without 64-byte registers).
//
// Included inside the namespace of one instruction-set build (see simd/kernels_impl.hpp), whose
// includes it relies on.

#define XK_INLINE inline __attribute__((always_inline))
#define XK_INLINE_LAMBDA __attribute__((always_inline))

constexpr int W = 16;  // lanes
#if defined(__AVX512F__)
constexpr int kNat = 16;  // float lanes per native register
#elif defined(__AVX__)
constexpr int kNat = 8;
#else
constexpr int kNat = 4;
#endif
constexpr int kParts = W / kNat;
constexpr int kNatD = kNat / 2;  // double lanes per native register
constexpr int kPartsD = W / kNatD;

typedef float nf __attribute__((vector_size(kNat * 4)));
typedef int32_t ni __attribute__((vector_size(kNat * 4)));
typedef double nd __attribute__((vector_size(kNatD * 8)));
typedef int64_t nl __attribute__((vector_size(kNatD * 8)));
typedef float nfh __attribute__((vector_size(kNatD * 4)));  // half a native float register
typedef int32_t nih __attribute__((vector_size(kNatD * 4)));

struct vf { nf p[kParts]; };  // 16 floats
struct vi { ni p[kParts]; };  // 16 int32 (also the masks of float comparisons: 0 or -1)
struct vd { nd p[kPartsD]; }; // 16 doubles
struct vl { nl p[kPartsD]; }; // masks of double comparisons

// XK_DO(n, statement): the statement for i_ = 0 .. n-1 (n <= 8, a constant), written out in
// straight-line code so that the parts of a vector stay in registers.
#define XK_I(k, n, ...) if ((k) < (n)) { constexpr int i_ = (k) < (n) ? (k) : 0; __VA_ARGS__; }
#define XK_DO(n, ...)                                                                        \
  do {                                                                                       \
    XK_I(0, n, __VA_ARGS__) XK_I(1, n, __VA_ARGS__) XK_I(2, n, __VA_ARGS__)                  \
    XK_I(3, n, __VA_ARGS__) XK_I(4, n, __VA_ARGS__) XK_I(5, n, __VA_ARGS__)                  \
    XK_I(6, n, __VA_ARGS__) XK_I(7, n, __VA_ARGS__)                                          \
  } while (0)
#define XK_BIN(T, R, op, parts)                                                          \
  XK_INLINE R operator op(T a, T b) noexcept { R r; XK_DO(parts, r.p[i_] = a.p[i_] op b.p[i_]); return r; }
#define XK_BIN_S(T, S, op, parts)                                                        \
  XK_INLINE T operator op(T a, S b) noexcept { T r; XK_DO(parts, r.p[i_] = a.p[i_] op b); return r; } \
  XK_INLINE T operator op(S a, T b) noexcept { T r; XK_DO(parts, r.p[i_] = a op b.p[i_]); return r; }
#define XK_ARITH(T, S, parts)                                                             \
  XK_BIN(T, T, +, parts) XK_BIN(T, T, -, parts) XK_BIN(T, T, *, parts) XK_BIN(T, T, /, parts) \
  XK_BIN_S(T, S, +, parts) XK_BIN_S(T, S, -, parts) XK_BIN_S(T, S, *, parts)             \
  XK_BIN_S(T, S, /, parts)                                                               \
  XK_INLINE T operator-(T a) noexcept { T r; XK_DO(parts, r.p[i_] = -a.p[i_]); return r; }    \
  XK_INLINE T& operator+=(T& a, T b) noexcept { a = a + b; return a; }

XK_ARITH(vf, float, kParts)
XK_ARITH(vd, double, kPartsD)
XK_BIN(vf, vi, <, kParts) XK_BIN(vf, vi, >, kParts) XK_BIN(vf, vi, >=, kParts)
XK_BIN(vf, vi, ==, kParts) XK_BIN(vf, vi, !=, kParts)
XK_BIN(vd, vl, >, kPartsD)
XK_BIN(vi, vi, ==, kParts) XK_BIN(vi, vi, >=, kParts) XK_BIN(vi, vi, |, kParts)
XK_BIN(vi, vi, &, kParts) XK_BIN(vi, vi, +, kParts) XK_BIN(vi, vi, -, kParts)
XK_BIN_S(vi, int32_t, +, kParts) XK_BIN_S(vi, int32_t, -, kParts) XK_BIN_S(vi, int32_t, &, kParts)
XK_BIN_S(vi, int32_t, |, kParts)
XK_INLINE vi& operator|=(vi& a, vi b) noexcept { a = a | b; return a; }
XK_INLINE vi operator<<(vi a, int s) noexcept { vi r; XK_DO(kParts, r.p[i_] = a.p[i_] << s); return r; }
XK_INLINE vi operator>>(vi a, int s) noexcept { vi r; XK_DO(kParts, r.p[i_] = a.p[i_] >> s); return r; }

/// m ? a : b lane by lane (m from a comparison).
XK_INLINE vf sel(vi m, vf a, vf b) noexcept { vf r; XK_DO(kParts, r.p[i_] = m.p[i_] ? a.p[i_] : b.p[i_]); return r; }
XK_INLINE vi sel(vi m, vi a, vi b) noexcept { vi r; XK_DO(kParts, r.p[i_] = m.p[i_] ? a.p[i_] : b.p[i_]); return r; }
XK_INLINE vd sel(vl m, vd a, vd b) noexcept { vd r; XK_DO(kPartsD, r.p[i_] = m.p[i_] ? a.p[i_] : b.p[i_]); return r; }

XK_INLINE vi as_int(vf a) noexcept { vi r; XK_DO(kParts, r.p[i_] = (ni)a.p[i_]); return r; }
XK_INLINE vf as_float(vi a) noexcept { vf r; XK_DO(kParts, r.p[i_] = (nf)a.p[i_]); return r; }
XK_INLINE vf to_float(vi a) noexcept { vf r; XK_DO(kParts, r.p[i_] = __builtin_convertvector(a.p[i_], nf)); return r; }

XK_INLINE vf splat(float a) noexcept { vf r; XK_DO(kParts, r.p[i_] = nf{} + a); return r; }
XK_INLINE vd splat_d(double a) noexcept { vd r; XK_DO(kPartsD, r.p[i_] = nd{} + a); return r; }
XK_INLINE vi splat_i(int32_t a) noexcept { vi r; XK_DO(kParts, r.p[i_] = ni{} + a); return r; }

// Loads and stores part by part: each part moves as one native register (a whole-struct memcpy
// would go through the stack and defeat store-to-load forwarding).
template <typename V> XK_INLINE V load_any(const void* p) noexcept { V v; std::memcpy(&v, p, sizeof v); return v; }
XK_INLINE vf load(const float* p) noexcept {
  vf r;
  XK_DO(kParts, std::memcpy(&r.p[i_], p + i_ * kNat, sizeof(nf)));
  return r;
}
XK_INLINE void store(float* p, vf v) noexcept {
  XK_DO(kParts, std::memcpy(p + i_ * kNat, &v.p[i_], sizeof(nf)));
}
XK_INLINE vi load_i(const int32_t* p) noexcept {
  vi r;
  XK_DO(kParts, std::memcpy(&r.p[i_], p + i_ * kNat, sizeof(ni)));
  return r;
}
XK_INLINE vd load_d(const double* p) noexcept {
  vd r;
  XK_DO(kPartsD, std::memcpy(&r.p[i_], p + i_ * kNatD, sizeof(nd)));
  return r;
}
XK_INLINE void store_d(double* p, vd v) noexcept {
  XK_DO(kPartsD, std::memcpy(p + i_ * kNatD, &v.p[i_], sizeof(nd)));
}

XK_INLINE float get(vf v, int k) noexcept { return v.p[k / kNat][k % kNat]; }

XK_INLINE vi iota() noexcept {
  const int32_t a[W] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return load_i(a);
}

#if defined(__AVX512F__)
/// The first n lanes of p, the others `fill` (n in [0, W]); nothing past p[n-1] is read.
XK_INLINE vf load_part(const float* p, int n, float fill) noexcept {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p);
  return load_any<vf>(&v);
}
XK_INLINE void store_part(float* p, vf v, int n) noexcept {
  __m512 r;
  std::memcpy(&r, &v, sizeof r);
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), r);
}
#elif defined(__AVX2__)
XK_INLINE vf load_part(const float* p, int n, float fill) noexcept {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
  const __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx);
  const __m256 f = _mm256_set1_ps(fill);
  __m256 h[2];
  h[0] = _mm256_blendv_ps(f, _mm256_maskload_ps(p, lo), _mm256_castsi256_ps(lo));
  h[1] = _mm256_blendv_ps(f, _mm256_maskload_ps(p + 8, hi), _mm256_castsi256_ps(hi));
  return load_any<vf>(h);
}
XK_INLINE void store_part(float* p, vf v, int n) noexcept {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 h[2];
  std::memcpy(h, &v, sizeof h);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx), h[0]);
  _mm256_maskstore_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx), h[1]);
}
#else
XK_INLINE vf load_part(const float* p, int n, float fill) noexcept {
  float buf[W];
  for (int k = 0; k < W; ++k) buf[k] = k < n ? p[k] : fill;
  return load(buf);
}
XK_INLINE void store_part(float* p, vf v, int n) noexcept {
  float buf[W];
  store(buf, v);
  for (int k = 0; k < n; ++k) p[k] = buf[k];
}
#endif

// ---- float16 storage: 16 binary16 values <-> one vf ------------------------------------------

XK_INLINE vf load_half(const uint16_t* p) noexcept {
#if defined(__AVX512F__)
  const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return load_any<vf>(&v);
#elif defined(__F16C__)
  __m256 h[2];
  h[0] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  h[1] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  return load_any<vf>(h);
#else
  float buf[W];
  for (int k = 0; k < W; ++k) buf[k] = half_bits_to_float(p[k]);
  return load(buf);
#endif
}

XK_INLINE void store_half(uint16_t* p, vf v) noexcept {
#if defined(__AVX512F__)
  __m512 r;
  std::memcpy(&r, &v, sizeof r);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
  __m256 h[2];
  std::memcpy(h, &v, sizeof h);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(h[0], _MM_FROUND_TO_NEAREST_INT));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_cvtps_ph(h[1], _MM_FROUND_TO_NEAREST_INT));
#else
  float buf[W];
  store(buf, v);
  for (int k = 0; k < W; ++k) p[k] = float_to_half_bits(buf[k]);
#endif
}

XK_INLINE vf load_part_half(const uint16_t* p, int n, float fill) noexcept {
  uint16_t buf[W];
  const uint16_t f = float_to_half_bits(fill);
  for (int k = 0; k < W; ++k) buf[k] = k < n ? p[k] : f;
  return load_half(buf);
}

XK_INLINE void store_part_half(uint16_t* p, vf v, int n) noexcept {
  uint16_t buf[W];
  store_half(buf, v);
  for (int k = 0; k < n; ++k) p[k] = buf[k];
}

// The low and high halves of a native float register, widened to doubles.
#if defined(__AVX512F__)
#define XK_LO 0, 1, 2, 3, 4, 5, 6, 7
#define XK_HI 8, 9, 10, 11, 12, 13, 14, 15
#elif defined(__AVX__)
#define XK_LO 0, 1, 2, 3
#define XK_HI 4, 5, 6, 7
#else
#define XK_LO 0, 1
#define XK_HI 2, 3
#endif
#if defined(__AVX512F__)
XK_INLINE nd widen_lo(nf v) noexcept {
  const __m512d r = _mm512_cvtps_pd(_mm512_castps512_ps256((__m512)v));
  return (nd)r;
}
XK_INLINE nd widen_hi(nf v) noexcept {
  const __m512d r = _mm512_cvtps_pd(_mm512_extractf32x8_ps((__m512)v, 1));
  return (nd)r;
}
#elif defined(__AVX__)
XK_INLINE nd widen_lo(nf v) noexcept {
  return (nd)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v));
}
XK_INLINE nd widen_hi(nf v) noexcept {
  return (nd)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1));
}
#else
XK_INLINE nd widen_lo(nf v) noexcept {
  return __builtin_convertvector(__builtin_shufflevector(v, v, XK_LO), nd);
}
XK_INLINE nd widen_hi(nf v) noexcept {
  return __builtin_convertvector(__builtin_shufflevector(v, v, XK_HI), nd);
}
#endif

#if defined(__AVX512F__)
#define XK_ALL 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#elif defined(__AVX__)
#define XK_ALL 0, 1, 2, 3, 4, 5, 6, 7
#else
#define XK_ALL 0, 1, 2, 3
#endif
XK_INLINE vd widen(vf v) noexcept {
  vd r;
  XK_DO(kParts, r.p[2 * i_] = widen_lo(v.p[i_]); r.p[2 * i_ + 1] = widen_hi(v.p[i_]));
  return r;
}

XK_INLINE vf narrow(vd v) noexcept {
  // Each pair of double registers becomes one float register in registers (halves stored to
  // memory and read back as one vector would defeat store-to-load forwarding).
  vf r;
  XK_DO(kParts, const nfh lo = __builtin_convertvector(v.p[2 * i_], nfh);
                const nfh hi = __builtin_convertvector(v.p[2 * i_ + 1], nfh);
                r.p[i_] = __builtin_shufflevector(lo, hi, XK_ALL));
  return r;
}

/// A float-lane mask as a mask of double lanes.
XK_INLINE vl wide_mask(vi m) noexcept {
  vl r;
  XK_DO(kParts, r.p[2 * i_] = __builtin_convertvector(
                    __builtin_shufflevector(m.p[i_], m.p[i_], XK_LO), nl);
                r.p[2 * i_ + 1] = __builtin_convertvector(
                    __builtin_shufflevector(m.p[i_], m.p[i_], XK_HI), nl));
  return r;
}

/// Lane-wise max that keeps `m` where v is NaN or not larger (the `v > m` rule of the scalar
/// kernels: a NaN never becomes the max).
XK_INLINE vf max_keep(vf m, vf v) noexcept { return sel(v > m, v, m); }

/// True when any lane of the mask is set.
XK_INLINE bool any(vi mask) noexcept {
  ni acc = mask.p[0];
  for (int i = 1; i < kParts; ++i) acc |= mask.p[i];
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)acc, (__m512i)acc) != 0;
#elif defined(__AVX__)
  return !_mm256_testz_si256((__m256i)acc, (__m256i)acc);
#elif defined(__SSE2__)
  return _mm_movemask_epi8((__m128i)acc) != 0;
#else
  int32_t buf[kNat];
  std::memcpy(buf, &acc, sizeof buf);
  int32_t r = 0;
  for (int k = 0; k < kNat; ++k) r |= buf[k];
  return r != 0;
#endif
}

/// Max of the lanes (NaN-free input).
XK_INLINE float hmax(vf v) noexcept {
  nf acc = v.p[0];
  for (int i = 1; i < kParts; ++i) acc = v.p[i] > acc ? v.p[i] : acc;
  float buf[kNat];
  std::memcpy(buf, &acc, sizeof buf);
  float m = buf[0];
  for (int k = 1; k < kNat; ++k) m = buf[k] > m ? buf[k] : m;
  return m;
}

/// A running double sum of float vectors, lane by lane, in native double registers.
struct Acc {
  nd p[kPartsD] = {};
  XK_INLINE void add(vf v) noexcept {
    XK_DO(kParts, p[2 * i_] += widen_lo(v.p[i_]); p[2 * i_ + 1] += widen_hi(v.p[i_]));
  }
  /// The 16 lanes (lane k holds the sum of lane k of every added vector).
  void lanes(double* out) const noexcept {
    XK_DO(kPartsD, std::memcpy(out + i_ * kNatD, &p[i_], sizeof(nd)));
  }
  /// The sum of all lanes, in a fixed order.
  double total() const noexcept {
    nd s = p[0];
    for (int i = 1; i < kPartsD; ++i) s += p[i];
    double buf[kNatD];
    std::memcpy(buf, &s, sizeof buf);
    double t = 0.0;
    for (int k = 0; k < kNatD; ++k) t += buf[k];
    return t;
  }
};

/// exp(z) for z <= 0 (or NaN) in float32, within 2 ulp of the correctly rounded value for
/// normal results; exp(0) is exactly 1, results below FLT_MIN's range (z < -87.33655) are 0, and
/// NaN stays NaN.
#if defined(__AVX512F__) || defined(__AVX2__)
// z = (K n + j) ln2 / K + r with K = kNat (16 or 8 table entries, j < K), |r| <= ln2 / (2 K):
// exp(z) = 2^n 2^(j/K) exp(r), 2^(j/K) and its rounding from tables (one lane permute each),
// exp(r) from a degree-4 Taylor polynomial (truncation below 1.3e-9 relative). 8 multiplies or
// FMAs per vector, against 11 for the wider reduction below; within 0.61 ulp (every float z).
alignas(64) inline constexpr float kExp2Sixteenths[16] = {
    0x1.0p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fep+0f, 0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
// (2^(j/16) - kExp2Sixteenths[j]) / kExp2Sixteenths[j]: the table's rounding, put back.
alignas(64) inline constexpr float kExp2Residuals[16] = {
    0.0f, 0x1.8d96d4p-25f, -0x1.9c0c22p-27f, 0x1.964904p-25f,
    0x1.125002p-25f, 0x1.370be4p-25f, -0x1.0a355p-25f, -0x1.00d8acp-27f,
    0x1.26055cp-26f, -0x1.05cb44p-25f, 0x1.67a1cap-28f, 0x1.a3b5e4p-28f,
    -0x1.f9c304p-27f, -0x1.6961b4p-28f, -0x1.a5217cp-28f, 0x1.61428ep-28f};
/// table[j] lane by lane (j in [0, K)): AVX-512 reads the 16 entries, AVX2 the even ones
/// (2^(j/8) = 2^(2j/16)).
XK_INLINE nf lookup_k(const float* table, ni j) noexcept {
#if defined(__AVX512F__)
  return (nf)_mm512_permutexvar_ps((__m512i)j, _mm512_load_ps(table));
#else
  const __m256 t = _mm256_setr_ps(table[0], table[2], table[4], table[6], table[8], table[10],
                                  table[12], table[14]);
  return (nf)_mm256_permutevar8x32_ps(t, (__m256i)j);
#endif
}
// One native register at a time: on AVX2 and the baseline build a 16-lane vector is several
// registers, and the parts' temporaries together would not fit in 16 registers (spills).
XK_INLINE nf exp_nonpos_part(nf z) noexcept {
  constexpr int kShift = kNat == 16 ? 4 : 3;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const nf t = z * (1.44269504088896341f * kNat) + shifter;
  const nf m = t - shifter;
  nf r = z - m * (0.693359375f / kNat);
  r = r - m * (-2.12194440e-4f / kNat);
  nf p = r * (1.0f / 24.0f) + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  const nf q = p * r;  // exp(r) - 1
  // m = K n + j as an integer from the low mantissa bits of t (no float->int conversion), in
  // unsigned arithmetic: where z is far below the range the bits are garbage (the result is
  // replaced by 0 below) and must not be a signed overflow.
  typedef uint32_t nu32 __attribute__((vector_size(kNat * 4)));
  const nu32 mi = (nu32)t - (nu32)(nf{} + shifter);
  const ni j = (ni)(mi & (kNat - 1));
  const nu32 n = (nu32)((ni)mi >> kShift);  // floor(m / K), arithmetic shift
  // s = 2^n times the table's 2^(j/K) (a normal float: n >= -126 wherever z >= -87.33654), and
  // exp(z) = s + s (exp(r) - 1 + the table's relative rounding) in one rounding.
  const nf sc = (nf)((nu32)lookup_k(kExp2Sixteenths, j) + (n << 23));
  const nf res = sc * (q + lookup_k(kExp2Residuals, j)) + sc;
  return z < -87.33654f ? nf{} : res;
}
XK_INLINE vf exp_nonpos(vf z) noexcept {
  vf r;
  XK_DO(kParts, r.p[i_] = exp_nonpos_part(z.p[i_]));
  return r;
}
#else
// Cody-Waite reduction z = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial.
XK_INLINE vf exp_nonpos(vf z) noexcept {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
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
  const vi bits = ((as_int(t) - as_int(splat(shifter))) + 127) << 23;
  const vf res = y * as_float(bits);
  return sel(z < splat(-87.33654f), splat(0.0f), res);
}
#endif

/// log(u) for finite u >= 1 in float32 (within 2 ulp): u = 2^k f with f in [sqrt(1/2), sqrt(2)),
/// log f = 2 atanh(s), s = (f - 1) / (f + 1), |s| <= 0.1716.
XK_INLINE vf log_ge1(vf u) noexcept {
  const vi bits = as_int(u);
  vi k = ((bits >> 23) & 0xff) - 127;
  vf f = as_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const vi big = f > splat(1.41421356f);
  f = sel(big, f * 0.5f, f);
  k = sel(big, k + 1, k);
  const vf s = (f - 1.0f) / (f + 1.0f);
  const vf s2 = s * s;
  vf q = splat(2.0f / 11.0f);
  q = q * s2 + 2.0f / 9.0f;
  q = q * s2 + 2.0f / 7.0f;
  q = q * s2 + 2.0f / 5.0f;
  q = q * s2 + 2.0f / 3.0f;
  const vf logf_ = s * 2.0f + s * s2 * q;
  const vf kf = to_float(k);
  return kf * 0.693359375f + (kf * -2.12194440e-4f + logf_);
}

/// log1p(r) for finite r >= 0 in float32, keeping the relative precision of small r:
/// log1p(r) = log(u) * r / (u - 1) with u = 1 + r rounded (r itself when u rounds to 1).
XK_INLINE vf log1p_nonneg(vf r) noexcept {
  const vf u = r + 1.0f;
  const vf d = u - 1.0f;
  const vf l = log_ge1(u);
  return sel(d == splat(0.0f), r, l * (r / sel(d == splat(0.0f), splat(1.0f), d)));
}

#undef XK_ALL
#undef XK_LO
#undef XK_HI
#undef XK_ARITH
#undef XK_BIN_S
#undef XK_BIN
