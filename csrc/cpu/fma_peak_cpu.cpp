// The FP32 FMA-throughput probe (fma_peak.h): SIMD path dispatch, OpenMP threads and the clock.
// Torch-free, and compiled for the baseline instruction set, as capability.cpp.
#include "cpu/fma_peak.h"

#include <omp.h>

#include <chrono>

#include "cpu/capability.h"

namespace lo {
namespace cpu {
namespace {

FmaPeakKernel kernel() {
  switch (capability()) {
    case Capability::kAVX512: return fma_peak_kernel_avx512();
    case Capability::kAVX2: return fma_peak_kernel_avx2();
    default: return fma_peak_kernel_baseline();
  }
}

// Read at run time, so the compiler cannot know the chains' coefficients; the checksum is written
// back, so it cannot drop the work.
volatile float g_mul = 0.99999994f;  // 1 - 2^-24
volatile float g_add = 5.9604645e-8f;  // 2^-24
volatile double g_checksum = 0.0;

}  // namespace

double fp32_fma_peak(int64_t iterations) {
  if (iterations < 1) return 0.0;
  const FmaPeakKernel k = kernel();
  const float mul = g_mul, add = g_add;
  int team = 1;
  double slowest = 0.0, checksum = 0.0;
#pragma omp parallel num_threads(omp_get_max_threads())
  {
#pragma omp single
    team = omp_get_num_threads();
    // The implicit barrier at the end of `single`: every thread starts the clock after it.
    const auto t0 = std::chrono::steady_clock::now();
    const float sum = k.run(iterations, mul, add, 1.0f + omp_get_thread_num());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#pragma omp critical
    {
      slowest = seconds > slowest ? seconds : slowest;
      checksum += sum;
    }
  }
  g_checksum = checksum;
  const double flop = 2.0 * k.lanes * k.chains * static_cast<double>(iterations) * team;
  return slowest > 0.0 ? flop / slowest : 0.0;
}

}  // namespace cpu
}  // namespace lo
