// The emulated device: its limits, the CUDA runtime calls of cuda_runtime_api.h, the launch checks
// of lo_emu/device.h and the fibers' guarded stacks.
#include "lo_emu/kernel_prologue.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>

namespace lo_emu {
namespace {

// Compute capabilities 9.0, 8.0, 8.9 and 7.5: the build's default targets, and a T4.
const DeviceLimits kProfiles[] = {
    DeviceLimits{},
    {"A100", 108, 1024, {1024, 1024, 64}, {2147483647, 65535, 65535}, 48 * 1024, 163 * 1024, 32},
    {"RTX 4090", 128, 1024, {1024, 1024, 64}, {2147483647, 65535, 65535}, 48 * 1024, 99 * 1024, 32},
    {"T4", 40, 1024, {1024, 1024, 64}, {2147483647, 65535, 65535}, 48 * 1024, 64 * 1024, 32},
};

DeviceLimits g_limits;
std::atomic<int> g_multiprocessors{DeviceLimits{}.multiprocessors};
std::atomic<int64_t> g_completed{0}, g_failed{0};

std::mutex g_attributes_mutex;
std::map<const void*, int> g_max_dynamic_shared;  // per kernel, as raised by cudaFuncSetAttribute

thread_local cudaError_t t_last_error = cudaSuccess;
// The emulator's account of this thread's last failed launch, kept after cudaGetLastError resets
// the error so that cudaGetErrorString can still tell it (the glue asks in that order).
thread_local cudaError_t t_detail_error = cudaSuccess;
thread_local std::string t_detail;
thread_local std::string t_message;

cudaError_t set_error(cudaError_t e) {
  t_last_error = e;
  return e;
}

}  // namespace

const DeviceLimits& device_limits() { return g_limits; }

const DeviceLimits* device_profiles(int* count) {
  *count = int(sizeof(kProfiles) / sizeof(kProfiles[0]));
  return kProfiles;
}

std::string set_device(const std::string& name) {
  for (const DeviceLimits& p : kProfiles) {
    if (name == p.name) {
      const std::string previous = g_limits.name;
      g_limits = p;
      g_multiprocessors = p.multiprocessors;
      const std::lock_guard<std::mutex> lock(g_attributes_mutex);
      g_max_dynamic_shared.clear();  // a new device: no kernel has opted in yet
      return previous;
    }
  }
  return "";
}

int set_multiprocessors(int count) {
  if (count < 1) count = 1;
  return g_multiprocessors.exchange(count);
}

int max_dynamic_shared(const void* kernel) {
  const std::lock_guard<std::mutex> lock(g_attributes_mutex);
  const auto it = g_max_dynamic_shared.find(kernel);
  return it == g_max_dynamic_shared.end() ? g_limits.shared_per_block : it->second;
}

void record_launch_error(cudaError_t error, const char* detail) {
  t_last_error = error;
  t_detail_error = error;
  t_detail = detail;
}

int64_t launches_completed() { return g_completed.load(); }
int64_t launches_failed() { return g_failed.load(); }
void count_launch(bool ok) { (ok ? g_completed : g_failed).fetch_add(1); }

namespace detail {

bool check_configuration(LaunchReport& report, const void* kernel, const dim3& grid, const dim3& block,
                         std::size_t shared_bytes) {
  const DeviceLimits& L = g_limits;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint32_t b[3] = {block.x, block.y, block.z}, g[3] = {grid.x, grid.y, grid.z};
  for (int k = 0; k < 3; ++k) {
    if (b[k] == 0 || b[k] > uint32_t(L.max_block_dim[k]) || g[k] == 0 || g[k] > uint32_t(L.max_grid_dim[k])) {
      report.fail(cudaErrorInvalidConfiguration,
                  "grid " + dims(grid) + " of blocks " + dims(block) +
                      ": every dimension must be >= 1, blocks at most (1024, 1024, 64), grids at most "
                      "(2^31 - 1, 65535, 65535)");
      return false;
    }
  }
  if (threads > uint64_t(L.max_threads_per_block)) {
    report.fail(cudaErrorInvalidConfiguration,
                "a block of " + std::to_string(threads) + " threads; the device allows " +
                    std::to_string(L.max_threads_per_block));
    return false;
  }
  const int limit = max_dynamic_shared(kernel);
  if (shared_bytes > std::size_t(limit)) {
    report.fail(cudaErrorInvalidValue,
                std::to_string(shared_bytes) + " bytes of dynamic shared memory; this kernel may use " +
                    std::to_string(limit) +
                    (limit == L.shared_per_block
                         ? " (48 KiB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) "
                           "raises it, up to 227 KiB)"
                         : " (its cudaFuncAttributeMaxDynamicSharedMemorySize)"));
    return false;
  }
  return true;
}

void finish_launch(LaunchReport& report) {
  const bool ok = report.error == cudaSuccess;
  count_launch(ok);
  if (!ok) record_launch_error(report.error, report.detail.c_str());
}

}  // namespace detail
}  // namespace lo_emu

using lo_emu::g_limits;

cudaError_t cudaGetLastError() { return std::exchange(lo_emu::t_last_error, cudaSuccess); }
cudaError_t cudaPeekAtLastError() { return lo_emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

static const char* cuda_error_text(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == lo_emu::t_detail_error) {
    lo_emu::t_message = std::string(cuda_error_text(error)) + " [CUDA emulation: " + lo_emu::t_detail + "]";
    return lo_emu::t_message.c_str();
  }
  return cuda_error_text(error);
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : lo_emu::set_error(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return lo_emu::set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = g_limits.max_threads_per_block; break;
    case cudaDevAttrMaxBlockDimX: *value = g_limits.max_block_dim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = g_limits.max_block_dim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = g_limits.max_block_dim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = g_limits.max_grid_dim[0]; break;
    case cudaDevAttrMaxGridDimY: *value = g_limits.max_grid_dim[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = g_limits.max_grid_dim[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = g_limits.shared_per_block; break;
    case cudaDevAttrWarpSize: *value = g_limits.warp_size; break;
    case cudaDevAttrMultiProcessorCount: *value = lo_emu::g_multiprocessors.load(); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = g_limits.shared_per_block_optin; break;
    default: return lo_emu::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || value > g_limits.shared_per_block_optin) {
        lo_emu::record_launch_error(
            cudaErrorInvalidValue,
            ("cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize, " + std::to_string(value) +
             "): the device allows at most " + std::to_string(g_limits.shared_per_block_optin) + " bytes")
                .c_str());
        return cudaErrorInvalidValue;
      }
      {
        const std::lock_guard<std::mutex> lock(lo_emu::g_attributes_mutex);
        lo_emu::g_max_dynamic_shared[func] = value;
      }
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      return (value >= -1 && value <= 100) ? cudaSuccess : lo_emu::set_error(cudaErrorInvalidValue);
  }
  return lo_emu::set_error(cudaErrorInvalidValue);
}

// A fiber's memory, as libco uses it: its saved registers at the start, its stack growing down from
// the end. Here: one page for the registers (and, in its last word, the mapping's size), one
// PROT_NONE page below the stack, the rest stack, so that an overflow faults at once.
extern "C" void* lo_emu_fiber_stack_alloc(unsigned int bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t size = (std::size_t(bytes) + page - 1) / page * page;
  if (size < 3 * page) return nullptr;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  auto* base = static_cast<unsigned char*>(p);
  if (mprotect(base + page, page, PROT_NONE) != 0) {
    munmap(p, size);
    return nullptr;
  }
  *reinterpret_cast<std::size_t*>(base + page - sizeof(std::size_t)) = size;
  return p;
}

extern "C" void lo_emu_fiber_stack_free(void* memory) {
  if (!memory) return;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  auto* base = static_cast<unsigned char*>(memory);
  munmap(memory, *reinterpret_cast<std::size_t*>(base + page - sizeof(std::size_t)));
}
