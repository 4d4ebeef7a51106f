// The device side of the emulated CUDA runtime, for the kernel files (csrc/cuda/*.cu and
// probes.cu, rewritten by rewrite.py): HIP-CPU runs each block's threads as fibers on one CPU
// thread and the blocks in parallel (C++17 parallel algorithms on TBB); this header adds what the
// project's kernels need on top of it, with CUDA's semantics where HIP-CPU's differ:
//
//  - launch_kernel, which the rewritten `kernel<<<grid, block, smem, stream>>>(args)` calls: checks
//    the launch against the emulated device's limits (cuda_runtime_api.h) as a GPU would, runs it to
//    completion, and leaves a failure for cudaGetLastError;
//  - __syncthreads, counted per thread: a launch whose threads reach different numbers of barriers
//    fails (on a GPU it deadlocks or corrupts the block), and the block's fibers are kept in HIP-CPU's
//    round-robin until every thread has finished, so that such a launch leaves no fiber behind;
//  - dynamic shared memory (the rewritten `extern __shared__`), filled with 0xFF bytes (NaN in
//    float and double) at the start of every block, so that a read before any write shows;
//  - __launch_bounds__ (rewritten into LO_EMU_LAUNCH_BOUNDS at the top of the kernel's body): a
//    block larger than the bound fails the launch, as on a GPU;
//  - float2/double2 with CUDA's layout and alignment (HIP-CPU's vector types have proxy members that
//    do not bind to a V&), whose loads and stores fail the launch on a misaligned address;
//  - fiber stacks of LO_EMU_FIBER_STACK_BYTES with a guard page (HIP-CPU's 7 KiB overflowed
//    silently in the TURTLE backward's per-thread arrays; the build patches its copy of tile.hpp to
//    take this size), so that an overflow is a SIGSEGV, never a silent corruption.
#pragma once

#if !defined(LO_EMU_KERNEL_TU)
#error "lo_emu/device.h is for the emulated kernel files (lo_emu/kernel_prologue.h)"
#endif

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// libco takes the fibers' stacks from these (before HIP-CPU includes libco.h).
extern "C" void* lo_emu_fiber_stack_alloc(unsigned int bytes);
extern "C" void lo_emu_fiber_stack_free(void* memory);
#define LIBCO_MALLOC lo_emu_fiber_stack_alloc
#define LIBCO_FREE lo_emu_fiber_stack_free
// A fiber's allocation: a page for libco's saved registers, a guard page, then the stack (256 KiB,
// mapped lazily: a fiber touches only the pages it uses).
#define LO_EMU_FIBER_STACK_BYTES (256u * 1024u + 2u * 4096u)

#include <hip/hip_constants.h>
#include <hip/hip_defines.h>
#include <hip/hip_device_launch_parameters.h>

// HIP-CPU's qualifiers: __device__ and __global__ ask GCC for SIMD clones of every function and
// __forceinline__ is not even `inline` without NDEBUG; the kernels need plain inline functions.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
// Static __shared__ variables are refused by rewrite.py (only `extern __shared__` is emulated).
#undef __shared__
#undef __HIP__
#undef __HIPCC__
#define __align__(n) alignas(n)
// HIP-CPU's warps are 64 wide and it has no *_sync shuffles: kernels that use warps do not compile
// here (see README.md); warpSize at least tells them CUDA's width.
#define warpSize 32

using dim3 = hip::detail::Dim3;

namespace lo_emu {

// What one launch found wrong; shared by the CPU threads that run its blocks.
struct LaunchReport {
  const char* file;
  int line;
  std::mutex mutex;
  cudaError_t error = cudaSuccess;
  std::string detail;

  LaunchReport(const char* f, int l) : file(f), line(l) {}
  void fail(cudaError_t e, const std::string& why) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (error != cudaSuccess) return;  // the first failure is the one reported
    error = e;
    detail = std::string(file) + ":" + std::to_string(line) + ": " + why;
  }
};

namespace detail {

inline std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// The state of the block this CPU thread is running (a block's fibers all run on one CPU thread).
struct Block {
  LaunchReport* report = nullptr;
  uint32_t threads = 0;
  uint32_t finished = 0;  // threads that returned from the kernel
  bool release = false;   // every thread has finished: leave the round-robin, in rank order
  std::vector<uint32_t> barriers;  // __syncthreads() reached, per thread
  std::vector<uint32_t> runs;      // kernel entries per thread: exactly 1 (the fiber protocol)
  std::unique_ptr<unsigned char[]> shared_storage;
  unsigned char* shared = nullptr;  // the block's dynamic shared memory, 256-byte aligned
  std::size_t shared_capacity = 0;

  void begin(LaunchReport* r, uint32_t n, std::size_t shared_bytes) {
    report = r;
    threads = n;
    finished = 0;
    release = false;
    barriers.assign(n, 0);
    runs.assign(n, 0);
    if (shared_bytes > shared_capacity) {
      shared_storage.reset(new unsigned char[shared_bytes + 256]);
      const auto p = reinterpret_cast<std::uintptr_t>(shared_storage.get());
      shared = shared_storage.get() + ((256 - p % 256) % 256);
      shared_capacity = shared_bytes;
    }
    if (shared_bytes) std::memset(shared, 0xFF, shared_bytes);
  }

  // Called by thread 0 once every thread has finished.
  void check() {
    const dim3 block = index(hip::detail::Tile::this_tile());
    for (uint32_t t = 0; t < threads; ++t) {
      if (runs[t] != 1) {
        report->fail(cudaErrorLaunchFailure,
                     "emulator fault: thread " + std::to_string(t) + " of block " + dims(block) +
                         " entered the kernel " + std::to_string(runs[t]) + " times");
        return;
      }
    }
    const auto [lo, hi] = std::minmax_element(barriers.begin(), barriers.end());
    if (*lo != *hi) {
      report->fail(cudaErrorLaunchFailure,
                   "threads of block " + dims(block) + " reached different numbers of __syncthreads(): thread " +
                       std::to_string(lo - barriers.begin()) + " reached " + std::to_string(*lo) +
                       ", thread " + std::to_string(hi - barriers.begin()) + " reached " +
                       std::to_string(*hi) + " (on a GPU this deadlocks or corrupts the block's shared memory)");
    }
  }
};

inline Block& this_block() {
  thread_local Block block;
  return block;
}

// The thread's index within its block (HIP-CPU's fiber id).
inline uint32_t thread_rank() { return id(hip::detail::Fiber::this_fiber()); }

inline void barrier() {
  ++this_block().barriers[thread_rank()];
  hip::detail::Tile::this_tile().barrier();
}

template <typename Kernel, typename Params>
void run_thread(LaunchReport& report, Kernel kernel, const Params& params, std::size_t shared_bytes) noexcept {
  Block& b = this_block();
  const uint32_t rank = thread_rank();
  // HIP-CPU starts every block on fiber 0, so thread 0 prepares the block for the others.
  if (rank == 0) b.begin(&report, count(hip::detail::Tile::this_tile().dimensions()), shared_bytes);
  ++b.runs[rank];
  std::apply(kernel, params);  // the kernel takes its own copies, as from a GPU's parameter space
  ++b.finished;
  // HIP-CPU ends a block when fiber n-1 returns to fiber 0, and expects every fiber to return
  // exactly once, in rank order, in that last round: a thread that finished early (fewer barriers)
  // would otherwise run the kernel again, or stay suspended into the next launch. So finished threads
  // wait in the round-robin until thread 0 sees them all done; then all leave in one round.
  for (;;) {
    if (rank == 0 && b.finished == b.threads) {
      b.release = true;
      b.check();
    }
    if (b.release) return;
    hip::detail::Tile::this_tile().barrier();
  }
}

bool check_configuration(LaunchReport& report, const void* kernel, const dim3& grid, const dim3& block,
                         std::size_t shared_bytes);
void finish_launch(LaunchReport& report);

}  // namespace detail

// The block's dynamic shared memory (the rewritten `extern __shared__ T name[]`).
template <typename T>
T* dynamic_shared(std::size_t alignment) {
  (void)alignment;  // the storage is 256-byte aligned
  return reinterpret_cast<T*>(detail::this_block().shared);
}

// Records a fault of the running launch (a misaligned access, a block above __launch_bounds__).
inline void kernel_fault(cudaError_t error, const std::string& why) {
  detail::this_block().report->fail(
      error, why + " in thread " + std::to_string(detail::thread_rank()) + " of block " +
                 detail::dims(index(hip::detail::Tile::this_tile())));
}

inline bool within_launch_bounds(long long max_threads) {
  const long long threads = count(hip::detail::Tile::this_tile().dimensions());
  if (threads <= max_threads) return true;
  if (detail::thread_rank() == 0) {
    kernel_fault(cudaErrorLaunchOutOfResources,
                 "a block of " + std::to_string(threads) + " threads exceeds the kernel's __launch_bounds__(" +
                     std::to_string(max_threads) + ")");
  }
  return false;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...): the arguments are converted to the
// kernel's parameter types at the launch, as CUDA does. Synchronous: the launch has finished (or
// failed, see cudaGetLastError) when this returns.
template <typename... P, typename... A>
void launch_kernel(const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
                   std::size_t shared_bytes, cudaStream_t /*stream*/, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "a kernel launch must pass one argument per parameter");
  LaunchReport report(file, line);
  const std::tuple<std::decay_t<P>...> params{std::forward<A>(args)...};
  if (detail::check_configuration(report, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes)) {
    auto body = [&report, kernel, &params, shared_bytes]() noexcept {
      detail::run_thread(report, kernel, params, shared_bytes);
    };
    hip::detail::Tiled_domain domain{block, grid, static_cast<std::uint32_t>(shared_bytes), body};
    for_each_tile(domain, body, std::tuple<>{});
  }
  detail::finish_launch(report);
}

namespace detail {
inline bool is_aligned(const void* p, std::size_t alignment) {
  auto address = reinterpret_cast<std::uintptr_t>(p);
  asm("" : "+r"(address));  // keep the compiler from assuming the type's alignment
  return address % alignment == 0;
}
}  // namespace detail

// float2 / double2 as CUDA lays them out, with CUDA's alignment enforced on every load and store
// through a pointer (a stack temporary is aligned by the compiler).
template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T x, y;

  Pair() = default;
  Pair(T x_, T y_) : x(x_), y(y_) {}
  Pair(const Pair& o) noexcept {
    if (detail::is_aligned(&o, sizeof(Pair))) {
      x = o.x;
      y = o.y;
    } else {
      kernel_fault(cudaErrorMisalignedAddress, "misaligned " + std::to_string(sizeof(Pair)) + "-byte load");
      x = y = std::numeric_limits<T>::quiet_NaN();
    }
  }
  Pair& operator=(const Pair& o) noexcept {
    if (detail::is_aligned(this, sizeof(Pair)) && detail::is_aligned(&o, sizeof(Pair))) {
      x = o.x;
      y = o.y;
    } else {
      kernel_fault(cudaErrorMisalignedAddress, "misaligned " + std::to_string(sizeof(Pair)) + "-byte store");
    }
    return *this;
  }
};

}  // namespace lo_emu

using float2 = lo_emu::Pair<float>;
using double2 = lo_emu::Pair<double>;
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "CUDA's float2 layout");
static_assert(sizeof(double2) == 16 && alignof(double2) == 16, "CUDA's double2 layout");

inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

inline void __syncthreads() { lo_emu::detail::barrier(); }

// The first statement of a kernel declared __launch_bounds__(max_threads, ...) (rewrite.py).
#define LO_EMU_LAUNCH_BOUNDS(max_threads, ...) \
  if (!::lo_emu::within_launch_bounds(static_cast<long long>(max_threads))) return
