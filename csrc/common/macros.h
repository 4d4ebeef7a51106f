// Qualifiers that let one function body serve the CPU and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define LO_HD __host__ __device__ __forceinline__
#else
#define LO_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDACC__) || defined(__GNUC__)
#define LO_RESTRICT __restrict__
#else
#define LO_RESTRICT
#endif

// Error codes returned by the torch-free kernels (cpu/*_kernel.h, cuda/*.cu); the torch glue turns
// them into exceptions with a message.
namespace lo {
enum class Status : int { kOk = 0, kLaunchFailed = 1, kUnsupportedShape = 2, kOutOfMemory = 3 };
}  // namespace lo
