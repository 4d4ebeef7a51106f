// The first line of every kernel file rewrite.py writes (csrc/cuda/*.cu, probes.cu): what nvcc
// would tell that file. The standard headers and the emulated runtime come first, so that the
// __CUDACC__ / __CUDA_ARCH__ defined below reach the project's headers (common/*.h take their CUDA
// paths: scalar math on ::expf and friends, no SIMD) and not the C++ library's.
#pragma once

#define LO_EMU_KERNEL_TU 1

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda_runtime.h>

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
