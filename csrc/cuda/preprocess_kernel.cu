// CUDA kernels of preprocess and its backward: one coordinate per thread in a grid-stride loop,
// the math from common/preprocess_math.h. Memory-bound: 4 bytes in and 8 out per float coordinate,
// stored as one 8-byte (x1, x2) pair.
#include "cuda/errors.h"
#include "cuda/preprocess_kernel.h"

namespace lo {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename S>
struct Pair;
template <>
struct Pair<float> { using type = float2; };
template <>
struct Pair<double> { using type = double2; };

template <typename S>
__global__ void preprocess_forward_kernel(const S* __restrict__ x, S* __restrict__ out, int64_t n,
                                          PreprocessParams<S> pp) {
  using P = typename Pair<S>::type;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    P r;
    preprocess_forward(x[j], pp, r.x, r.y);
    reinterpret_cast<P*>(out)[j] = r;
  }
}

template <typename S>
__global__ void preprocess_backward_kernel(const S* __restrict__ grad_out, const S* __restrict__ x,
                                           S* __restrict__ grad_x, int64_t n, PreprocessParams<S> pp) {
  using P = typename Pair<S>::type;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    const P g = reinterpret_cast<const P*>(grad_out)[j];
    grad_x[j] = preprocess_backward(x[j], g.x, g.y, pp);
  }
}

}  // namespace

template <typename S>
Status preprocess_forward(const S* x, S* out, int64_t n, const PreprocessParams<S>& pp,
                          cudaStream_t stream) {
  if (n == 0) return Status::kOk;
  preprocess_forward_kernel<S><<<grid_size(n, kThreads), kThreads, 0, stream>>>(x, out, n, pp);
  LO_RETURN_IF_LAUNCH_FAILED();
  return Status::kOk;
}

template <typename S>
Status preprocess_backward(const S* grad_out, const S* x, S* grad_x, int64_t n,
                           const PreprocessParams<S>& pp, cudaStream_t stream) {
  if (n == 0) return Status::kOk;
  preprocess_backward_kernel<S><<<grid_size(n, kThreads), kThreads, 0, stream>>>(grad_out, x, grad_x, n, pp);
  LO_RETURN_IF_LAUNCH_FAILED();
  return Status::kOk;
}

template Status preprocess_forward<float>(const float*, float*, int64_t, const PreprocessParams<float>&, cudaStream_t);
template Status preprocess_forward<double>(const double*, double*, int64_t, const PreprocessParams<double>&, cudaStream_t);
template Status preprocess_backward<float>(const float*, const float*, float*, int64_t, const PreprocessParams<float>&, cudaStream_t);
template Status preprocess_backward<double>(const double*, const double*, double*, int64_t, const PreprocessParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace lo
