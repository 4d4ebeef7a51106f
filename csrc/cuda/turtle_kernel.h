// The CUDA launchers of turtle_step and its backward (turtle_kernel.cu). Torch-free: raw pointers,
// int64 sizes, the caller's stream in, a Status out; the torch glue is turtle_cuda.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/macros.h"
#include "common/turtle_math.h"

namespace lo {
namespace cuda {

// Bytes of device scratch turtle_forward needs: 0 when the MLP's packed parameters fit in a block's
// shared memory (the kernel gathers them there from the weight table), else room for one packed
// copy in global memory (networks of more than ~12 k-57 k parameters, by device).
template <typename S>
int64_t turtle_forward_scratch_bytes(const TurtleNet& net);

template <typename S>
Status turtle_forward(const TurtleForwardArgs<S>& args, const TurtleNet& net,
                      const TurtleStep<S>& step, void* scratch, cudaStream_t stream);

// Bytes of device scratch turtle_backward needs (the per-block partial sums of the weight and bias
// gradients, and a packed copy of the parameters when they do not fit in shared memory); a
// function of n and the network only, like the launch grid.
template <typename S>
int64_t turtle_backward_scratch_bytes(int64_t n, const TurtleNet& net);

template <typename S>
Status turtle_backward(const TurtleBackwardArgs<S>& args, const TurtleNet& net,
                       const TurtleStep<S>& step, void* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace lo
