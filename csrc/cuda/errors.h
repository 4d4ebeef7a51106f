// How the torch-free .cu files report a failed launch to the torch glue: the launcher returns
// lo::Status::kLaunchFailed and records the CUDA error, which the glue turns into a message.
#pragma once

#include <cuda_runtime.h>

#include "common/macros.h"

namespace lo {
namespace cuda {

void record_error(cudaError_t error);
// The message of the last error recorded on this host thread.
const char* last_error_message();

// After every launch: returns from the launcher with kLaunchFailed if the launch failed.
#define LO_RETURN_IF_LAUNCH_FAILED()                            \
  do {                                                          \
    const cudaError_t lo_err_ = cudaGetLastError();             \
    if (lo_err_ != cudaSuccess) {                               \
      ::lo::cuda::record_error(lo_err_);                        \
      return ::lo::Status::kLaunchFailed;                       \
    }                                                           \
  } while (0)

// A failed runtime call also leaves its error as the thread's last error, which the next
// launch's LO_RETURN_IF_LAUNCH_FAILED would report against a launch that went well: consume it.
#define LO_RETURN_IF_CUDA_ERROR(expr)                           \
  do {                                                          \
    const cudaError_t lo_err_ = (expr);                         \
    if (lo_err_ != cudaSuccess) {                               \
      (void)cudaGetLastError();                                 \
      ::lo::cuda::record_error(lo_err_);                        \
      return ::lo::Status::kLaunchFailed;                       \
    }                                                           \
  } while (0)

// Blocks for a grid-stride loop over n items of `per_block` each: enough to fill the device a
// few times over, never more than the work needs.
int64_t grid_size(int64_t n, int64_t per_block);

}  // namespace cuda
}  // namespace lo
