// Host-only SIMD vectors of float coordinates (GCC/Clang vector extensions) and their elementary
// functions, so that the per-coordinate math in *_math.h runs W coordinates per instruction on the
// CPU. The polynomials are Cephes' single-precision ones (about 1-2 ulp); they need no libm and so
// vectorise, which std::exp does not without fast-math. Compiled per CPU capability (cpu/dispatch).
#pragma once

#include <cstdint>
#include <cstring>

// Always inlined: each capability's kernel file compiles these with its own instruction set, so an
// out-of-line copy shared between those files by the linker could run AVX-512 code on a CPU without.
#define LO_SIMD_INLINE inline __attribute__((always_inline))

namespace lo {
namespace simd {

template <int W>
struct F32Vec {
  typedef float type __attribute__((vector_size(4 * W)));
  typedef int32_t itype __attribute__((vector_size(4 * W)));
};
using f32x4 = F32Vec<4>::type;
using f32x8 = F32Vec<8>::type;
using f32x16 = F32Vec<16>::type;

template <typename V>
struct Lanes;
template <>
struct Lanes<f32x4> { static constexpr int value = 4; using itype = F32Vec<4>::itype; };
template <>
struct Lanes<f32x8> { static constexpr int value = 8; using itype = F32Vec<8>::itype; };
template <>
struct Lanes<f32x16> { static constexpr int value = 16; using itype = F32Vec<16>::itype; };

template <typename V>
LO_SIMD_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
LO_SIMD_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// e^(x - n ln 2) for the integer n nearest x / ln 2: the remainder taken in two parts for
// accuracy, then Cephes' degree-5 polynomial. Shared by vexp and vexp_in_range.
template <typename V>
LO_SIMD_INLINE V exp_remainder(V x, V n) {
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const V z = r * r;
  V y = 1.9875691500E-4f * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  return y * z + r + 1.0f;
}

template <typename V>
LO_SIMD_INLINE V vexp(V x) {
  using IV = typename Lanes<V>::itype;
  const V hi = V{} + 88.3762626647949f, lo_ = V{} - 87.3365447504f;
  V xc = x > hi ? hi : x;
  xc = xc < lo_ ? lo_ : xc;
  // n = floor(x / ln 2 + 0.5).
  V fx = xc * 1.44269504088896341f + 0.5f;
  V t = __builtin_convertvector(__builtin_convertvector(fx, IV), V);
  V n = t > fx ? t - 1.0f : t;
  V y = exp_remainder(xc, n);
  IV e = (__builtin_convertvector(n, IV) + 127) << 23;
  y = y * (V)e;
  const V inf = V{} + __builtin_inff();
  y = x > 88.72283905206835f ? inf : y;   // overflow, as std::exp
  y = x < -87.3365447504f ? V{} : y;       // below the normal range: flushed to 0
  return y;                                // NaN stays NaN (all comparisons false)
}

// Natural log for x > 0 normal numbers and +inf (the only arguments the kernels pass).
template <typename V>
LO_SIMD_INLINE V vlog(V x) {
  using IV = typename Lanes<V>::itype;
  IV bits = (IV)x;
  IV e = ((bits >> 23) & 0xff) - 126;
  V m = (V)((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  V ef = __builtin_convertvector(e, V);
  auto small = m < 0.707106781186547524f;
  ef = small ? ef - 1.0f : ef;
  m = small ? m + m - 1.0f : m - 1.0f;
  V z = m * m;
  V y = 7.0376836292E-2f * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  V r = m + y + ef * 0.693359375f;
  const V inf = V{} + __builtin_inff();
  r = x == inf ? inf : r;
  r = x != x ? x : r;
  return r;
}

// e^x for x in [-86, 88], the range the sigmoid and tanh below clamp to: vexp's polynomial with
// the cheaper steps that range allows. n = round(x / ln 2) by the 1.5 * 2^23 trick, which leaves n
// in t's low mantissa bits; the scaling by 2^n is an integer add to the exponent field, exact while
// the result stays normal (down to 2^-124 here).
template <typename V>
LO_SIMD_INLINE V vexp_in_range(V x) {
  using IV = typename Lanes<V>::itype;
  const V t = x * 1.44269504088896341f + 12582912.0f;
  const V n = t - 12582912.0f;
  const V y = exp_remainder(x, n);
  return (V)((IV)y + ((IV)t << 23));
}

// 1 / (1 + e^-x), with the limits of std's and torch's float sigmoid. -x is clamped to [-86, 88],
// vexp_in_range's range: below -86 the sum rounds to 1 anyway. Above 88 the clamp alone would
// leave a floor of 6e-39 where the true value falls to 0 (at -x > ln FLT_MAX, where e^-x overflows
// and 1 / (1 + inf) is exactly 0); that floor kept σ'(x) = σ(1 - σ) from vanishing, and a huge
// input multiplied it into a wrong finite gradient (or Inf where 0 · Inf is NaN). So beyond
// ln FLT_MAX the result is 0, as torch's; between 88 and ln FLT_MAX it stays below 6.1e-39.
// NaN stays NaN: the clamps are written as the compare-and-pick that x86 min/max implement with
// NaN passing through, and NaN fails the overflow test.
template <typename V>
LO_SIMD_INLINE V vsigmoid(V x) {
  const V lo = V{} - 86.0f, hi = V{} + 88.0f;
  const V u = -x;
  V clamped = lo > u ? lo : u;
  clamped = hi < clamped ? hi : clamped;
  const V s = 1.0f / (1.0f + vexp_in_range(clamped));
  return u > 88.72283905206835f ? V{} : s;
}

template <typename V>
LO_SIMD_INLINE V vtanh(V x) {
  using IV = typename Lanes<V>::itype;
  const IV sign = (IV)x & (IV{} + static_cast<int32_t>(0x80000000u));
  const V ax = (V)((IV)x ^ sign);
  // Small |x|: odd polynomial (relative accuracy near 0); large: 1 - 2 / (e^{2|x|} + 1), with
  // 2|x| clamped to 88, where the result is 1 in float.
  const V z = x * x;
  V p = -5.70498872745E-3f * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  const V small = p * z * x + x;
  V u = ax + ax;
  const V hi = V{} + 88.0f;
  u = hi < u ? hi : u;
  const V big = (V)((IV)(1.0f - 2.0f / (vexp_in_range(u) + 1.0f)) | sign);
  return ax < 0.625f ? small : big;
}

}  // namespace simd

template <>
struct ScalarOf<simd::f32x4> { using type = float; static constexpr int lanes = 4; };
template <>
struct ScalarOf<simd::f32x8> { using type = float; static constexpr int lanes = 8; };
template <>
struct ScalarOf<simd::f32x16> { using type = float; static constexpr int lanes = 16; };

#define LO_SIMD_MATH(V)                                                              \
  LO_SIMD_INLINE V exp(V x) { return simd::vexp(x); }                                        \
  LO_SIMD_INLINE V log(V x) { return simd::vlog(x); }                                        \
  LO_SIMD_INLINE V tanh(V x) { return simd::vtanh(x); }                                      \
  LO_SIMD_INLINE V sigmoid(V x) { return simd::vsigmoid(x); }                   \
  LO_SIMD_INLINE V abs(V x) { return x < 0.0f ? -x : x; }

LO_SIMD_MATH(simd::f32x4)
LO_SIMD_MATH(simd::f32x8)
LO_SIMD_MATH(simd::f32x16)
#undef LO_SIMD_MATH

}  // namespace lo
