// Kernels that test the emulator, written in CUDA as csrc/cuda is and rewritten by the same
// rewrite.py: each probe launches one and says what happened (probes.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "probes.h"

namespace lo_emu {
namespace {

constexpr int kThreads = 64;

std::string outcome() {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return "ok";
  return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
}

// Every thread writes its slot, all wait, each reads its neighbour's: right only if the barrier
// really separates the writes from the reads.
__global__ void neighbour_kernel(int* out) {
  extern __shared__ int slots[];
  slots[threadIdx.x] = int(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// Thread 5 skips the barrier.
__global__ void skipped_barrier_kernel(int* out) {
  if (threadIdx.x != 5) __syncthreads();
  out[threadIdx.x] = 1;
}

// Thread t reaches t % 3 barriers.
__global__ void looped_barrier_kernel(int* out) {
  for (unsigned k = 0; k < threadIdx.x % 3; ++k) __syncthreads();
  out[threadIdx.x] = 1;
}

// Reads shared memory nobody wrote: the emulator's fill.
__global__ void unwritten_shared_kernel(unsigned* out) {
  extern __shared__ __align__(16) unsigned char bytes[];
  unsigned word;
  std::memcpy(&word, bytes + 4 * threadIdx.x, 4);
  out[threadIdx.x] = word;
}

__global__ void __launch_bounds__(128) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

__global__ void plain_kernel(int* out) { out[(blockIdx.y * gridDim.x + blockIdx.x) % 4096] = 1; }

__global__ void shared_kernel(int* out) {
  extern __shared__ int big[];
  big[threadIdx.x] = 1;
  out[threadIdx.x] = big[threadIdx.x];
}

__global__ void pair_kernel(const float* in, float* out) {
  const float2 v = reinterpret_cast<const float2*>(in)[threadIdx.x];
  out[threadIdx.x] = v.x + v.y;
}

// A 96 KiB per-thread array: 13 times HIP-CPU's own fiber stack.
__global__ void deep_stack_kernel(double* out) {
  volatile double a[12 * 1024];
  for (int k = 0; k < 12 * 1024; ++k) a[k] = k + threadIdx.x;
  double s = 0;
  for (int k = 0; k < 12 * 1024; k += 1024) s += a[k];
  out[threadIdx.x] = s;
}

struct Buffer {
  std::vector<int> v = std::vector<int>(4096, -1);
  int* p() { return v.data(); }
};

std::string neighbours() {
  Buffer b;
  const int blocks = 40;
  neighbour_kernel<<<blocks, kThreads, kThreads * sizeof(int)>>>(b.p());
  const std::string r = outcome();
  if (r != "ok") return r;
  for (int blk = 0; blk < blocks; ++blk)
    for (int t = 0; t < kThreads; ++t)
      if (b.v[blk * kThreads + t] != blk * 1000 + (t + 1) % kThreads)
        return "wrong value at block " + std::to_string(blk) + " thread " + std::to_string(t);
  return "ok";
}

std::string skipped_barrier() {
  Buffer b;
  skipped_barrier_kernel<<<3, kThreads>>>(b.p());
  return outcome();
}

std::string looped_barrier() {
  Buffer b;
  looped_barrier_kernel<<<2, kThreads>>>(b.p());
  return outcome();
}

std::string unwritten_shared() {
  std::vector<unsigned> out(kThreads, 0);
  unwritten_shared_kernel<<<1, kThreads, 4 * kThreads>>>(out.data());
  const std::string r = outcome();
  if (r != "ok") return r;
  for (unsigned w : out)
    if (w != 0xFFFFFFFFu) return "shared memory was not filled with 0xFF";
  return "ok";
}

std::string launch_bounds(unsigned threads) {
  Buffer b;
  bounded_kernel<<<1, threads>>>(b.p());
  const std::string r = outcome();
  if (r == "ok" && b.v[threads - 1] != 1) return "the kernel did not run";
  if (r != "ok" && b.v[0] != -1) return "a refused launch ran the kernel";
  return r;
}

std::string block_of(dim3 block) {
  Buffer b;
  plain_kernel<<<dim3(1), block>>>(b.p());
  return outcome();
}

std::string grid_of(dim3 grid) {
  Buffer b;
  plain_kernel<<<grid, 1>>>(b.p());
  return outcome();
}

// Launches shared_kernel with `bytes` of dynamic shared memory after raising its limit to `optin`
// (0: no cudaFuncSetAttribute call).
std::string shared(int bytes, int optin) {
  Buffer b;
  if (optin) {
    const cudaError_t e = cudaFuncSetAttribute(shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
    }
  }
  shared_kernel<<<1, kThreads, bytes>>>(b.p());
  const std::string r = outcome();
  if (optin) cudaFuncSetAttribute(shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024);
  return r;
}

std::string pairs(int offset) {
  std::vector<float> in(2 * kThreads + 2, 1.0f), out(kThreads, 0.0f);
  pair_kernel<<<1, kThreads>>>(in.data() + offset, out.data());
  const std::string r = outcome();
  if (r == "ok" && out[kThreads - 1] != 2.0f) return "wrong sum";
  return r;
}

std::string deep_stack() {
  std::vector<double> out(kThreads, 0.0);
  deep_stack_kernel<<<4, kThreads>>>(out.data());
  const std::string r = outcome();
  if (r != "ok") return r;
  for (int t = 0; t < kThreads; ++t) {
    double want = 0;
    for (int k = 0; k < 12 * 1024; k += 1024) want += k + t;
    if (out[t] != want) return "wrong sum in thread " + std::to_string(t);
  }
  return "ok";
}

std::string attributes() {
  int sms = 0, optin = 0, shared_default = 0, warp = 0, threads = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  cudaDeviceGetAttribute(&shared_default, cudaDevAttrMaxSharedMemoryPerBlock, 0);
  cudaDeviceGetAttribute(&warp, cudaDevAttrWarpSize, 0);
  cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerBlock, 0);
  return std::string(device_limits().name) + ": sms=" + std::to_string(sms) + " optin=" + std::to_string(optin) + " shared=" +
         std::to_string(shared_default) + " warp=" + std::to_string(warp) + " threads=" + std::to_string(threads);
}

const std::map<std::string, std::function<std::string()>>& probes() {
  static const std::map<std::string, std::function<std::string()>> table = {
      {"neighbours", neighbours},
      {"skipped_barrier", skipped_barrier},
      {"looped_barrier", looped_barrier},
      {"unwritten_shared", unwritten_shared},
      {"launch_bounds_met", [] { return launch_bounds(128); }},
      {"launch_bounds_exceeded", [] { return launch_bounds(256); }},
      {"block_1024", [] { return block_of(dim3(1024)); }},
      {"block_1025", [] { return block_of(dim3(1025)); }},
      {"block_z_65", [] { return block_of(dim3(1, 1, 65)); }},
      {"grid_zero", [] { return grid_of(dim3(0)); }},
      {"grid_y_65536", [] { return grid_of(dim3(1, 65536)); }},
      {"shared_48k", [] { return shared(48 * 1024, 0); }},
      {"shared_above_48k", [] { return shared(48 * 1024 + 4, 0); }},
      {"shared_above_48k_opted_in", [] { return shared(100 * 1024, 100 * 1024); }},
      {"shared_above_opt_in", [] { return shared(100 * 1024 + 4, 100 * 1024); }},
      {"opt_in_above_227k", [] { return shared(200 * 1024, 227 * 1024 + 4); }},
      {"aligned_float2", [] { return pairs(0); }},
      {"misaligned_float2", [] { return pairs(1); }},
      {"deep_stack", deep_stack},
      {"attributes", attributes},
  };
  return table;
}

}  // namespace

std::vector<std::string> probe_names() {
  std::vector<std::string> names;
  for (const auto& entry : probes()) names.push_back(entry.first);
  return names;
}

std::string run_probe(const std::string& name) {
  const auto it = probes().find(name);
  if (it == probes().end()) return "unknown probe " + name;
  return it->second();
}

}  // namespace lo_emu
