// Launchers of the CUDA preprocess kernels. Torch-free: raw pointers, sizes and a stream in,
// a status out (cuda/errors.h says how a failure is reported).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/macros.h"
#include "common/preprocess_math.h"

namespace lo {
namespace cuda {

template <typename S>
Status preprocess_forward(const S* x, S* out, int64_t n, const PreprocessParams<S>& pp,
                          cudaStream_t stream);

template <typename S>
Status preprocess_backward(const S* grad_out, const S* x, S* grad_x, int64_t n,
                           const PreprocessParams<S>& pp, cudaStream_t stream);

}  // namespace cuda
}  // namespace lo
