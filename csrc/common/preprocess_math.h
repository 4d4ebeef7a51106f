// SPEC §1, per coordinate: the log-magnitude/sign preprocessing and its exact derivative.
// Shared by the CPU kernels (V = float, double or a SIMD vector) and the CUDA kernels (V = float,
// double); the meta-learner LSTM kernels call it for the loss and the gradient.
#pragma once

#include <cmath>
#include <limits>

#include "common/scalar_math.h"

namespace lo {

// The options' valid range for storage type S, the one the glue enforces (common/glue.h) and
// learnedopt/ops/_checks.py states for the wrappers, fake kernels and reference alike. Within it,
// every finite x has finite outputs and a finite derivative:
//   p_min <= p <= p_max: e^p and e^-p are normal numbers of S (p_max = -ln of the smallest normal,
//     87.34 for float, 708.40 for double), so the small branch's e^p · x cannot overflow and the
//     threshold is no subnormal (which the SIMD log does not take); and log(|x| + log_eps) / p
//     stays finite for |x| up to S's max (p_min = 2 ln(max) / max, the 2 a margin for rounding).
//   0 <= log_eps <= 1: an epsilon (1e-8 in the Ravi/Larochelle port); the bound keeps |x| + log_eps
//     finite for every finite x.
template <typename S>
struct PreprocessLimits {
  static double p_min() {
    const double max = static_cast<double>(std::numeric_limits<S>::max());
    return 2.0 * std::log(max) / max;
  }
  static double p_max() { return -std::log(static_cast<double>(std::numeric_limits<S>::min())); }
};
constexpr double kPreprocessLogEpsMax = 1.0;

// The constants of one call, rounded once to the storage type S as the reference does
// (torch compares and multiplies an S tensor with Python floats converted to S).
template <typename S>
struct PreprocessParams {
  S p;          // divisor of the log
  S threshold;  // e^-p
  S exp_p;      // e^p, the slope of the small branch
  S log_eps;    // added inside the log (0 by default; 1e-8 in the Ravi/Larochelle port)
  bool strict;  // |x| > e^-p instead of >= (the original code)

  static PreprocessParams make(double p, double log_eps, bool strict) {
    return {static_cast<S>(p), static_cast<S>(std::exp(-p)), static_cast<S>(std::exp(p)),
            static_cast<S>(log_eps), strict};
  }
};

template <typename V, typename S>
LO_HD auto preprocess_is_large(V ax, const PreprocessParams<S>& pp) -> decltype(ax > ax) {
  const V thr = splat<V>(pp.threshold);
  return pp.strict ? (ax > thr) : (ax >= thr);
}

// x -> (x1, x2). NaN -> (NaN, NaN); ±Inf -> (+Inf, ±1).
template <typename V, typename S>
LO_HD void preprocess_forward(V x, const PreprocessParams<S>& pp, V& x1, V& x2) {
  const V one = splat<V>(1), minus_one = splat<V>(-1);
  const V ax = lo::abs(x);
  const auto large = preprocess_is_large(ax, pp);
  // The log only ever sees the large branch's |x| (or 1), so it is never taken of 0 or a subnormal.
  const V safe = select(large, ax, one);
  x1 = select(large, lo::log(safe + splat<V>(pp.log_eps)) / splat<V>(pp.p), minus_one);
  x1 = select(is_nan(x), x, x1);
  x2 = select(large, select(x > splat<V>(0), one, minus_one), x * splat<V>(pp.exp_p));
}

// d/dx of g1·x1 + g2·x2: g1 / (p (|x| + eps)) · sign(x) on the large branch, g2 · e^p on the small
// one. Finite for every finite x (0 and |x| = e^-p included); 0 at ±Inf; NaN at NaN.
template <typename V, typename S>
LO_HD V preprocess_backward(V x, V g1, V g2, const PreprocessParams<S>& pp) {
  const V one = splat<V>(1);
  const V ax = lo::abs(x);
  const auto large = preprocess_is_large(ax, pp);
  const V safe = select(large, ax, one);
  const V d_large = (g1 / splat<V>(pp.p)) / (safe + splat<V>(pp.log_eps));
  const V d_signed = select(x > splat<V>(0), d_large, -d_large);
  const V d = select(large, d_signed, g2 * splat<V>(pp.exp_p));
  return select(is_nan(x), x, d);
}

}  // namespace lo
