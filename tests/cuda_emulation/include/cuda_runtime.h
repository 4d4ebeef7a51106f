// <cuda_runtime.h> of the emulation: the host API always; the device side (HIP-CPU fibers as
// threads, launches, __syncthreads, shared memory, float2/double2) in the kernel files, which the
// build marks with LO_EMU_KERNEL_TU (lo_emu/kernel_prologue.h) — the torch glue includes this
// header too, and must not see HIP-CPU's macros next to torch's.
#pragma once

#include "cuda_runtime_api.h"

#if defined(LO_EMU_KERNEL_TU)
#include "lo_emu/device.h"
#endif
