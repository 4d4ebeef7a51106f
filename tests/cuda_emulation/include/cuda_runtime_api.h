// The host side of the emulated CUDA runtime: the names csrc/cuda uses (error codes, streams,
// device and function attributes), with CUDA's numeric values, implemented by ../runtime.cpp on an
// emulated H100/H200 (lo_emu::DeviceLimits). Torch-free and HIP-free, so that the CUDA torch glue
// (csrc/cuda/*_cuda.cpp) can include it next to the torch headers; the device side (launches,
// threads, barriers, shared memory) is lo_emu/device.h, for the kernel files only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

// Streams are accepted and ignored: every emulated launch runs to completion before it returns.
typedef struct CUstream_st* cudaStream_t;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

// The last error of this host thread; cudaGetLastError also resets it to cudaSuccess.
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
// CUDA's text for the code; for the error of this thread's last failed emulated launch, followed by
// the emulator's account of why it failed (which launch site, block, limit or thread).
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);

template <typename T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

namespace lo_emu {

// What the emulated device allows. The default is an H100 SXM / H200 (compute capability 9.0);
// device_profiles() lists the other GPUs it can be (CUDA's figures for each).
struct DeviceLimits {
  const char* name = "H100";
  int multiprocessors = 132;
  int max_threads_per_block = 1024;
  int max_block_dim[3] = {1024, 1024, 64};
  int max_grid_dim[3] = {2147483647, 65535, 65535};
  int shared_per_block = 48 * 1024;         // dynamic shared memory without an opt-in
  int shared_per_block_optin = 227 * 1024;  // the most cudaFuncSetAttribute may raise it to
  int warp_size = 32;
};

// The limits launches are checked against (set them between launches, not during one).
// set_device makes the emulated device another GPU of device_profiles() and returns the previous
// one's name (an unknown name changes nothing and returns ""); set_multiprocessors changes the SM
// count that cudaDeviceGetAttribute reports (a smaller GPU: grid-stride kernels get smaller grids)
// and returns the previous count.
const DeviceLimits& device_limits();
const DeviceLimits* device_profiles(int* count);
std::string set_device(const std::string& name);
int set_multiprocessors(int count);

// The dynamic shared memory a kernel may be launched with: 48 KiB unless cudaFuncSetAttribute
// raised it for that kernel.
int max_dynamic_shared(const void* kernel);

// Records a failed launch on this host thread (cudaGetLastError returns `error`, and
// cudaGetErrorString(error) appends `detail`).
void record_launch_error(cudaError_t error, const char* detail);

// Kernel launches that ran to completion, and those that failed, since the library was loaded.
int64_t launches_completed();
int64_t launches_failed();
void count_launch(bool ok);

}  // namespace lo_emu
