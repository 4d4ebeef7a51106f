// CUDA kernels of turtle_step and its backward: one thread per coordinate, the per-coordinate math
// of common/turtle_math.h in S (float or double). Each block gathers the MLP's parameters from the
// caller's tensors (the TurtleWeights pointer table) into the packed layout in shared memory; a
// network too large for it is packed once into global scratch by a small kernel instead.
//
// Weight and bias gradients are sums over the n coordinates, computed without atomics so that a
// re-run gives the same bits: a grid whose size depends on n and the network only; each block
// stages a tile of coordinates' dz and layer inputs in shared memory, and each of its threads adds
// the tile's sum for the parameters it owns, in a fixed order, to the block's row of double
// partials; a second kernel adds the rows in block order.
#include "cuda/errors.h"
#include "cuda/turtle_kernel.h"

namespace lo {
namespace cuda {
namespace {

constexpr int kForwardThreads = 256;
constexpr int64_t kMaxBackwardBlocks = 1024;
constexpr int64_t kMaxScratchBytes = int64_t(64) << 20;
constexpr int kReduceThreads = 256;

// Coordinates per backward tile: fewer for run-time widths, whose staging is 3x wider.
template <int kH>
constexpr int kBackwardThreads = kH > 0 ? 128 : 64;

// Row stride of the staging arrays: odd, so that thread c writing row c hits bank c mod 32.
template <int kH>
constexpr int kStageStride = (kH > 0 ? kH : kTurtleMaxWidth) | 1;

// The packed parameters where the math reads them: gathered into shared memory by the block's
// threads (kSharedParams), or the copy turtle_pack_kernel left in global memory.
template <bool kSharedParams, typename S>
__device__ const S* stage_params(const TurtleWeights<S>& w, const TurtleNet& net,
                                 const S* LO_RESTRICT global_packed, S* shared) {
  if constexpr (kSharedParams) {
    for (int k = 0; k < net.layers; ++k) {
      for (int64_t q = threadIdx.x; q < net.block_size(k); q += blockDim.x)
        shared[net.offset[k] + q] = turtle_packed_param(w, net, k, q);
    }
    __syncthreads();
    return shared;
  } else {
    return global_packed;
  }
}

// The layer whose block of the packed layout holds entry p.
__device__ int layer_of(const TurtleNet& net, int64_t p) {
  int k = 0;
  while (k + 1 < net.layers && p >= net.offset[k + 1]) ++k;
  return k;
}

template <typename S>
__global__ void __launch_bounds__(kReduceThreads)
    turtle_pack_kernel(TurtleWeights<S> w, TurtleNet net, S* LO_RESTRICT packed) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= net.num_params) return;
  const int k = layer_of(net, p);
  packed[p] = turtle_packed_param(w, net, k, p - net.offset[k]);
}

template <int kH, bool kSharedParams, typename S>
__global__ void __launch_bounds__(kForwardThreads)
    turtle_forward_kernel(TurtleForwardArgs<S> a, TurtleNet net, TurtleStep<S> st,
                          const S* LO_RESTRICT global_packed) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const S* params = stage_params<kSharedParams>(a.weights, net, global_packed,
                                                reinterpret_cast<S*>(shared_bytes));
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < a.n; j += stride) {
    S theta_new, m_new;
    ::lo::turtle_forward<kH>(a.theta[j], a.grad[j], a.m[j], a.alpha[j], params, net, st, theta_new, m_new);
    a.theta_new[j] = theta_new;
    a.m_new[j] = m_new;
  }
}

template <int kH, bool kSharedParams, typename S>
__global__ void __launch_bounds__(kBackwardThreads<kH>)
    turtle_backward_kernel(TurtleBackwardArgs<S> a, TurtleNet net, TurtleStep<S> st,
                           const S* LO_RESTRICT global_packed, double* LO_RESTRICT partials) {
  constexpr int kThreads = kBackwardThreads<kH>;
  constexpr int kStride = kStageStride<kH>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  S* stage_dz = reinterpret_cast<S*>(shared_bytes);  // [coordinate][unit]
  S* stage_in = stage_dz + kThreads * kStride;
  const S* params =
      stage_params<kSharedParams>(a.weights, net, global_packed, stage_in + kThreads * kStride);

  const int tid = threadIdx.x;
  double* LO_RESTRICT row = partials + int64_t(blockIdx.x) * net.num_params;
  for (int64_t p = tid; p < net.num_params; p += kThreads) row[p] = 0.0;

  // Whether this thread's coordinate exists; a thread past the end stages zeros (its own terms
  // can be 0 · Inf = NaN under an Inf meta-weight, and 0 times them would still be NaN).
  bool active = false;
  // Called by every thread of the block for every layer (the math is uniform), hence the barriers.
  auto layer_grad = [&](int k, const S* dz, int out, const S* in_act, int in, auto out_count,
                        auto in_count) {
    constexpr int kOut = decltype(out_count)::value, kIn = decltype(in_count)::value;
    for_n<kOut>(out, [&](int o) { stage_dz[tid * kStride + o] = active ? dz[o] : S(0); });
    for_n<kIn>(in, [&](int i) { stage_in[tid * kStride + i] = active ? in_act[i] : S(0); });
    __syncthreads();
    const int weights = out * in;
    for (int p = tid; p < weights + out; p += kThreads) {
      S sum = S(0);
      if (p < weights) {
        const int o = p / in, i = p - o * in;
        for (int c = 0; c < kThreads; ++c) sum += stage_dz[c * kStride + o] * stage_in[c * kStride + i];
      } else {
        for (int c = 0; c < kThreads; ++c) sum += stage_dz[c * kStride + (p - weights)];
      }
      row[net.offset[k] + p] += static_cast<double>(sum);
    }
    __syncthreads();  // the next layer overwrites the stage
  };

  S acts[(kTurtleMaxLayers - 1) * kActStride<kH>];
  const int64_t tiles = (a.n + kThreads - 1) / kThreads;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t j = tile * kThreads + tid;
    active = j < a.n;
    // A coordinate past the end takes part in the barriers with zero inputs (and stages zeros).
    const S zero = S(0);
    S d_grad, d_m, d_alpha;
    const S d_theta_new = active ? a.d_theta_new[j] : zero;
    ::lo::turtle_backward<kH>(d_theta_new, active ? a.d_m_new[j] : zero, active ? a.grad[j] : zero,
                        active ? a.m[j] : zero, active ? a.alpha[j] : zero, params, net, st, acts,
                        d_grad, d_m, d_alpha, layer_grad);
    if (active) {
      a.d_theta[j] = d_theta_new;
      a.d_grad[j] = d_grad;
      a.d_m[j] = d_m;
      a.d_alpha[j] = d_alpha;
    }
  }
}

// Adds the blocks' rows in block order and writes each sum into its weight's or bias's gradient.
template <typename S>
__global__ void __launch_bounds__(kReduceThreads)
    turtle_reduce_partials_kernel(const double* LO_RESTRICT partials, int64_t blocks,
                                  TurtleNet net, TurtleWeights<S> w, TurtleWeightGrads<S> d) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= net.num_params) return;
  double sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) sum += partials[b * net.num_params + p];
  const int k = layer_of(net, p);
  turtle_store_param_grad(d, w, net, k, p - net.offset[k], static_cast<S>(sum));
}

int64_t backward_blocks(int64_t n, const TurtleNet& net) {
  const int threads = net.hidden_widths_are(kTurtlePaperWidth) ? kBackwardThreads<kTurtlePaperWidth>
                                                                : kBackwardThreads<0>;
  const int64_t tiles = (n + threads - 1) / threads;
  int64_t blocks = tiles < kMaxBackwardBlocks ? tiles : kMaxBackwardBlocks;
  const int64_t fit = kMaxScratchBytes / (net.num_params * int64_t(sizeof(double)));
  if (blocks > fit) blocks = fit > 0 ? fit : 1;
  return blocks;
}

int max_shared_bytes() {
  int device = 0, bytes = 48 << 10;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

// Launches kernel<<<blocks, threads, shared>>>, raising the kernel's dynamic shared memory limit
// when it needs more than the default 48 KiB.
template <typename Kernel, typename... Args>
Status launch(Kernel kernel, int64_t blocks, int threads, int64_t shared, cudaStream_t stream,
              Args... args) {
  if (shared > (48 << 10)) {
    LO_RETURN_IF_CUDA_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  }
  kernel<<<dim3(unsigned(blocks)), dim3(threads), size_t(shared), stream>>>(args...);
  LO_RETURN_IF_LAUNCH_FAILED();
  return Status::kOk;
}

template <typename S>
int64_t param_bytes(const TurtleNet& net) {
  return net.num_params * int64_t(sizeof(S));
}

template <int kH, typename S>
int64_t backward_stage_bytes() {
  return 2 * int64_t(kBackwardThreads<kH>) * kStageStride<kH> * int64_t(sizeof(S));
}

template <typename S>
int64_t backward_stage_bytes(const TurtleNet& net) {
  return net.hidden_widths_are(kTurtlePaperWidth) ? backward_stage_bytes<kTurtlePaperWidth, S>()
                                                  : backward_stage_bytes<0, S>();
}

bool forward_params_in_shared(int64_t param_bytes) { return param_bytes <= max_shared_bytes(); }

template <typename S>
bool backward_params_in_shared(const TurtleNet& net) {
  return backward_stage_bytes<S>(net) + param_bytes<S>(net) <= max_shared_bytes();
}

// The packed copy in global memory, for a network too large for shared memory.
template <typename S>
Status pack_params(const TurtleWeights<S>& w, const TurtleNet& net, S* packed, cudaStream_t stream) {
  const int64_t blocks = (net.num_params + kReduceThreads - 1) / kReduceThreads;
  return launch(turtle_pack_kernel<S>, blocks, kReduceThreads, 0, stream, w, net, packed);
}

template <int kH, typename S>
Status forward_with(const TurtleForwardArgs<S>& a, const TurtleNet& net, const TurtleStep<S>& st,
                    void* scratch, cudaStream_t stream) {
  const int64_t blocks = grid_size(a.n, kForwardThreads);
  if (forward_params_in_shared(param_bytes<S>(net)))
    return launch(turtle_forward_kernel<kH, true, S>, blocks, kForwardThreads, param_bytes<S>(net),
                  stream, a, net, st, static_cast<const S*>(nullptr));
  S* packed = static_cast<S*>(scratch);
  const Status s = pack_params(a.weights, net, packed, stream);
  if (s != Status::kOk) return s;
  return launch(turtle_forward_kernel<kH, false, S>, blocks, kForwardThreads, 0, stream, a, net, st,
                static_cast<const S*>(packed));
}

template <int kH, typename S>
Status backward_with(const TurtleBackwardArgs<S>& a, const TurtleNet& net, const TurtleStep<S>& st,
                     S* packed, double* partials, int64_t blocks, cudaStream_t stream) {
  constexpr int kThreads = kBackwardThreads<kH>;
  const int64_t stage_bytes = backward_stage_bytes<kH, S>();
  if (stage_bytes > max_shared_bytes()) return Status::kUnsupportedShape;
  if (backward_params_in_shared<S>(net))
    return launch(turtle_backward_kernel<kH, true, S>, blocks, kThreads,
                  stage_bytes + param_bytes<S>(net), stream, a, net, st,
                  static_cast<const S*>(nullptr), partials);
  const Status s = pack_params(a.weights, net, packed, stream);
  if (s != Status::kOk) return s;
  return launch(turtle_backward_kernel<kH, false, S>, blocks, kThreads, stage_bytes, stream, a, net,
                st, static_cast<const S*>(packed), partials);
}

// The backward's scratch: the blocks' rows of double partials, then (when needed) the packed copy.
int64_t partials_bytes(int64_t blocks, const TurtleNet& net) {
  return blocks * net.num_params * int64_t(sizeof(double));
}

}  // namespace

template <typename S>
int64_t turtle_forward_scratch_bytes(const TurtleNet& net) {
  return forward_params_in_shared(param_bytes<S>(net)) ? 0 : param_bytes<S>(net);
}

template <typename S>
Status turtle_forward(const TurtleForwardArgs<S>& a, const TurtleNet& net, const TurtleStep<S>& st,
                      void* scratch, cudaStream_t stream) {
  if (a.n == 0) return Status::kOk;
  if (net.hidden_widths_are(kTurtlePaperWidth))
    return forward_with<kTurtlePaperWidth>(a, net, st, scratch, stream);
  return forward_with<0>(a, net, st, scratch, stream);
}

template <typename S>
int64_t turtle_backward_scratch_bytes(int64_t n, const TurtleNet& net) {
  const int64_t packed = backward_params_in_shared<S>(net) ? 0 : param_bytes<S>(net);
  return partials_bytes(backward_blocks(n, net), net) + packed;
}

template <typename S>
Status turtle_backward(const TurtleBackwardArgs<S>& a, const TurtleNet& net, const TurtleStep<S>& st,
                       void* scratch, cudaStream_t stream) {
  const int64_t blocks = backward_blocks(a.n, net);  // 0 when n == 0
  double* partials = static_cast<double*>(scratch);
  // After the partials, which are doubles: aligned for S.
  S* packed = reinterpret_cast<S*>(static_cast<unsigned char*>(scratch) + partials_bytes(blocks, net));
  if (blocks > 0) {
    const Status s =
        net.hidden_widths_are(kTurtlePaperWidth)
            ? backward_with<kTurtlePaperWidth>(a, net, st, packed, partials, blocks, stream)
            : backward_with<0>(a, net, st, packed, partials, blocks, stream);
    if (s != Status::kOk) return s;
  }
  const int64_t reduce_blocks = (net.num_params + kReduceThreads - 1) / kReduceThreads;
  return launch(turtle_reduce_partials_kernel<S>, reduce_blocks, kReduceThreads, 0, stream,
                static_cast<const double*>(partials), blocks, net, a.weights, a.d_weights);
}

template int64_t turtle_forward_scratch_bytes<float>(const TurtleNet&);
template int64_t turtle_forward_scratch_bytes<double>(const TurtleNet&);
template int64_t turtle_backward_scratch_bytes<float>(int64_t, const TurtleNet&);
template int64_t turtle_backward_scratch_bytes<double>(int64_t, const TurtleNet&);
template Status turtle_forward<float>(const TurtleForwardArgs<float>&, const TurtleNet&,
                                      const TurtleStep<float>&, void*, cudaStream_t);
template Status turtle_forward<double>(const TurtleForwardArgs<double>&, const TurtleNet&,
                                       const TurtleStep<double>&, void*, cudaStream_t);
template Status turtle_backward<float>(const TurtleBackwardArgs<float>&, const TurtleNet&,
                                       const TurtleStep<float>&, void*, cudaStream_t);
template Status turtle_backward<double>(const TurtleBackwardArgs<double>&, const TurtleNet&,
                                        const TurtleStep<double>&, void*, cudaStream_t);

}  // namespace cuda
}  // namespace lo
