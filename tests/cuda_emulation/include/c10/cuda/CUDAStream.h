// c10/cuda/CUDAStream.h of the emulation: one stream, the default one (emulated launches are
// synchronous, so there is nothing to order).
#pragma once

#include <cuda_runtime_api.h>

namespace c10 {
namespace cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return stream(); }
};

inline CUDAStream getCurrentCUDAStream(int /*device*/ = -1) { return {}; }

}  // namespace cuda
}  // namespace c10
