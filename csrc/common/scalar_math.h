// Elementary functions for the per-coordinate math, written so that the same call works for a
// float or double scalar (CPU and CUDA) and, on the CPU, for a SIMD vector of coordinates
// (simd.h adds those overloads). The per-op math headers call only these, never std:: directly.
#pragma once

#include <cmath>
#include <utility>

#include "common/macros.h"

namespace lo {

// The element type and lane count of a value type: V itself and 1 for scalars; simd.h
// specialises it for vectors.
template <typename V>
struct ScalarOf {
  using type = V;
  static constexpr int lanes = 1;
};

namespace detail {
template <typename V, typename T, std::size_t... L>
LO_HD V splat_lanes(T s, std::index_sequence<L...>) {
  return V{((void)L, s)...};
}
}  // namespace detail

// Accumulators a loop over weights keeps live at once (a dense layer's outputs, a transposed
// product's inputs), as many as stay in registers beside an input and a broadcast weight. AVX-512's
// 32 vector registers and a GPU thread hold the 20-22 of the kernels' hidden-20 loops; the 16 of
// SSE and AVX2 (and the scalar double path) hold about 13, so those go 10 at a time: with 20 live,
// GCC spilled 246 of a TURTLE 20x20 layer's 400 FMA results to the stack on AVX2
// (bench/instruction_mix/README.md). Blocking never changes the order of any one sum.
template <typename V>
constexpr int kRegisterBlock =
#if defined(__CUDACC__)
    1 << 20;
#else
    sizeof(V) >= 64 ? 1 << 20 : 10;
#endif

// The block a loop over a compile-time count kN of accumulators takes: kRegisterBlock<V> where
// that splits kN into whole blocks, else all kN at once (kN == 0, a run-time count, gives 0).
template <int kN, typename V>
constexpr int kRegisterBlockOf =
    kN > kRegisterBlock<V> && kN % kRegisterBlock<V> == 0 ? kRegisterBlock<V> : kN;

// A constant of the value type V: a scalar, or the same number in every SIMD lane. A plain
// conversion or a vector built from W copies: `V{} + s` would cost an add per use, which IEEE
// rules (0 + -0 = +0) forbid the compiler to drop, and a loop of lane stores gets SLP-vectorised
// by GCC into one masked broadcast per lane once inlined into the kernels, while an initialiser of
// identical elements always becomes one broadcast (or a broadcast memory operand of an FMA).
template <typename V, typename S>
LO_HD V splat(S s) {
  using T = typename ScalarOf<V>::type;
  if constexpr (ScalarOf<V>::lanes == 1) {
    return static_cast<V>(s);
  } else {
    return detail::splat_lanes<V>(static_cast<T>(s), std::make_index_sequence<ScalarOf<V>::lanes>{});
  }
}

// Works for a scalar (bool mask) and for a GCC vector (vector mask) alike.
template <typename M, typename V>
LO_HD V select(M mask, V a, V b) {
  return mask ? a : b;
}

#define LO_SCALAR_MATH(T, EXP, LOG, TANH)                                     \
  LO_HD T exp(T x) { return EXP(x); }                                         \
  LO_HD T log(T x) { return LOG(x); }                                         \
  LO_HD T tanh(T x) { return TANH(x); }                                       \
  LO_HD T sigmoid(T x) { return T(1) / (T(1) + EXP(-x)); }                    \
  LO_HD T abs(T x) { return x < T(0) ? -x : x; }

#if defined(__CUDA_ARCH__)
LO_SCALAR_MATH(float, ::expf, ::logf, ::tanhf)
LO_SCALAR_MATH(double, ::exp, ::log, ::tanh)
#else
LO_SCALAR_MATH(float, std::exp, std::log, std::tanh)
LO_SCALAR_MATH(double, std::exp, std::log, std::tanh)
#endif
#undef LO_SCALAR_MATH

// A NaN test that also works lane-wise on SIMD vectors (x != x only for NaN).
template <typename V>
LO_HD auto is_nan(V x) -> decltype(x != x) {
  return x != x;
}

template <typename V>
LO_HD V relu(V x) {
  return select(x > splat<V>(0), x, splat<V>(0));
}

}  // namespace lo

#if !defined(__CUDACC__)
#include "common/simd.h"
#endif
