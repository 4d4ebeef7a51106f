// c10/cuda/CUDAGuard.h of the emulation: the emulated device is the CPU, so there is no current
// device to switch; the guard only refuses a tensor that is not on it.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "CUDA emulation: the emulated device holds CPU tensors, got ", device);
  }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
