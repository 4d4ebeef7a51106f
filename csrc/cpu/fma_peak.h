// FP32 fused multiply-add throughput of this CPU: the compute ceiling of the roofline that
// bench/ops.py measures the fused kernels against (torch.mm can fall well short of it, e.g. when
// MKL takes a narrower path on a non-Intel CPU). The SIMD loop is compiled once per capability
// (fma_peak_<cap>.cpp), like the kernels, and runs on the path the kernels take; the threads and
// the clock are in fma_peak_cpu.cpp, which is compiled for the baseline instruction set.
#pragma once

#include <cstdint>

#ifdef LO_CAPABILITY
#include "common/scalar_math.h"  // LO_VEC's vector types
#endif

namespace lo {
namespace cpu {

struct FmaPeakKernel {
  // Runs `chains` independent chains acc = acc * mul + add on `lanes`-wide float vectors for
  // `iterations` steps each, starting from start, start + 1/128, ...; returns the sum of every
  // lane of every final accumulator (so the work cannot be dropped). With 0 < mul < 1 and
  // add = 1 - mul the accumulators tend to 1 and stay normal floats for any iteration count.
  float (*run)(int64_t iterations, float mul, float add, float start);
  int lanes;
  int chains;
};

FmaPeakKernel fma_peak_kernel_baseline();
FmaPeakKernel fma_peak_kernel_avx2();
FmaPeakKernel fma_peak_kernel_avx512();

// FLOP per second of all omp_get_max_threads() threads running the kernel of capability() for
// `iterations` steps each at once, counting 2 FLOP per lane per multiply-add (the baseline x86
// path has no FMA instruction: there it is a multiply and an add). Time: the slowest thread's,
// on a steady clock, from a barrier all threads pass before starting. iterations >= 1.
double fp32_fma_peak(int64_t iterations);

#ifdef LO_CAPABILITY
namespace LO_CAPABILITY {

// Enough independent chains to keep two FMA pipes busy through a latency of up to 6 cycles (8
// with 16), within the vector registers: 16 of AVX-512's 32, 12 of SSE's and AVX2's 16 (leaving
// room for mul and add).
constexpr int kFmaPeakChains = sizeof(LO_VEC) == 64 ? 16 : 12;

inline float fma_peak_run(int64_t iterations, float mul, float add, float start) {
  using V = LO_VEC;
  constexpr int W = sizeof(V) / sizeof(float);
  const V m = V{} + mul, a = V{} + add;
  V acc[kFmaPeakChains];
  for (int k = 0; k < kFmaPeakChains; ++k) acc[k] = V{} + (start + k * 0.0078125f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (int k = 0; k < kFmaPeakChains; ++k) acc[k] = acc[k] * m + a;  // one FMA (-ffp-contract=fast)
  }
  V total = acc[0];
  for (int k = 1; k < kFmaPeakChains; ++k) total += acc[k];
  float sum = 0.0f;
  for (int l = 0; l < W; ++l) sum += total[l];
  return sum;
}

}  // namespace LO_CAPABILITY

FmaPeakKernel LO_KERNEL(fma_peak_kernel)() {
  return {&LO_CAPABILITY::fma_peak_run, static_cast<int>(sizeof(LO_VEC) / sizeof(float)),
          LO_CAPABILITY::kFmaPeakChains};
}
#endif  // LO_CAPABILITY

}  // namespace cpu
}  // namespace lo
