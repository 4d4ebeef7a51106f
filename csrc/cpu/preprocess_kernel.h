// CPU kernels of preprocess and its backward: SIMD over coordinates, the math from
// common/preprocess_math.h. Torch-free; compiled once per capability (preprocess_<cap>.cpp).
#pragma once

#include <cstdint>

#include "common/preprocess_math.h"
#include "cpu/parallel.h"

namespace lo {
namespace cpu {

struct PreprocessKernels {
  void (*forward_f32)(const float* x, float* out, int64_t n, const PreprocessParams<float>& pp);
  void (*forward_f64)(const double* x, double* out, int64_t n, const PreprocessParams<double>& pp);
  void (*backward_f32)(const float* grad_out, const float* x, float* grad_x, int64_t n,
                       const PreprocessParams<float>& pp);
  void (*backward_f64)(const double* grad_out, const double* x, double* grad_x, int64_t n,
                       const PreprocessParams<double>& pp);
};

PreprocessKernels preprocess_kernels_baseline();
PreprocessKernels preprocess_kernels_avx2();
PreprocessKernels preprocess_kernels_avx512();

#ifdef LO_CAPABILITY
namespace LO_CAPABILITY {

// Fewest coordinates worth handing to a thread: the op moves a few bytes per coordinate.
constexpr int64_t kPreprocessGrain = 1 << 14;

// Out is (n, 2) interleaved, as torch.stack([x1, x2], -1).
template <typename S, typename V, int W>
void preprocess_forward(const S* LO_RESTRICT x, S* LO_RESTRICT out, int64_t n,
                        const PreprocessParams<S>& pp) {
  for_each_range(n, kPreprocessGrain, [&](int64_t begin, int64_t end) {
    int64_t j = begin;
    if constexpr (W > 1) {
      for (; j + W <= end; j += W) {
      V xv, x1, x2;
      for (int l = 0; l < W; ++l) xv[l] = x[j + l];
      preprocess_forward(xv, pp, x1, x2);
      for (int l = 0; l < W; ++l) {
        out[2 * (j + l)] = x1[l];
        out[2 * (j + l) + 1] = x2[l];
      }
      }
    }
    for (; j < end; ++j) preprocess_forward(x[j], pp, out[2 * j], out[2 * j + 1]);
  });
}

template <typename S, typename V, int W>
void preprocess_backward(const S* LO_RESTRICT grad_out, const S* LO_RESTRICT x,
                         S* LO_RESTRICT grad_x, int64_t n, const PreprocessParams<S>& pp) {
  for_each_range(n, kPreprocessGrain, [&](int64_t begin, int64_t end) {
    int64_t j = begin;
    if constexpr (W > 1) {
      for (; j + W <= end; j += W) {
      V xv, g1, g2;
      for (int l = 0; l < W; ++l) {
        xv[l] = x[j + l];
        g1[l] = grad_out[2 * (j + l)];
        g2[l] = grad_out[2 * (j + l) + 1];
      }
      const V d = preprocess_backward(xv, g1, g2, pp);
      for (int l = 0; l < W; ++l) grad_x[j + l] = d[l];
      }
    }
    for (; j < end; ++j) grad_x[j] = preprocess_backward(x[j], grad_out[2 * j], grad_out[2 * j + 1], pp);
  });
}

}  // namespace LO_CAPABILITY

// float runs W lanes per instruction; double stays scalar (it serves gradcheck and tests).
PreprocessKernels LO_KERNEL(preprocess_kernels)() {
  constexpr int W = sizeof(LO_VEC) / sizeof(float);
  return {&LO_CAPABILITY::preprocess_forward<float, LO_VEC, W>,
          &LO_CAPABILITY::preprocess_forward<double, double, 1>,
          &LO_CAPABILITY::preprocess_backward<float, LO_VEC, W>,
          &LO_CAPABILITY::preprocess_backward<double, double, 1>};
}
#endif  // LO_CAPABILITY

}  // namespace cpu
}  // namespace lo
