// CUDA kernels of meta_lstm_step and its backward: one thread per coordinate, the weights staged
// in shared memory, the math from common/meta_lstm_math.h (the same functions as the CPU kernels).
// Torch-free, so that it compiles without a CUDA build of torch; meta_lstm_cuda.cpp is the glue.
//
// Weight gradients without float atomics: each block of the backward kernel owns a row of partial
// sums in the scratch buffer; a second kernel adds the rows in block order; a third unpacks the
// sums into the weight and loss gradients. The grid depends on n only, so results are bitwise
// reproducible.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/meta_lstm_math.h"
#include "cuda/errors.h"
#include "cuda/meta_lstm_kernel.h"

namespace lo {
namespace cuda {
namespace {

constexpr int kForwardThreads = 128;
constexpr int kElementwiseThreads = 256;

// Copies the weights into shared memory (all threads take part) and folds the loss into the gate
// bias; returns the parameters pointing at the staged copies.
template <int HC, int D, typename S>
__device__ MetaLSTMParams<S> stage_weights(const MetaLSTMDeviceWeights<S>& w, S* sm) {
  const int H = HC > 0 ? HC : w.hidden;
  const S loss = w.loss[0];
  MetaLSTMParams<S> P{w.w_ih, w.w_hh, sm, w.w_f, w.b_f, w.w_i, w.b_i, H, w.pp};
  for (int r = threadIdx.x; r < 4 * H; r += blockDim.x) {
    sm[r] = meta_lstm_gate_bias<D, S>(r, w.w_ih, w.b_ih, w.b_hh, loss, w.pp);
  }
  if (HC > 0) {
    S* w_hh = sm + 4 * H;
    S* w_ih = w_hh + 4 * H * H;
    S* w_f = w_ih + 4 * H * D;
    S* w_i = w_f + H + 2;
    S* b = w_i + H + 2;
    for (int k = threadIdx.x; k < 4 * H * H; k += blockDim.x) w_hh[k] = w.w_hh[k];
    for (int k = threadIdx.x; k < 4 * H * D; k += blockDim.x) w_ih[k] = w.w_ih[k];
    for (int k = threadIdx.x; k < H + 2; k += blockDim.x) {
      w_f[k] = w.w_f[k];
      w_i[k] = w.w_i[k];
    }
    if (threadIdx.x == 0) {
      b[0] = w.b_f[0];
      b[1] = w.b_i[0];
    }
    P.w_hh = w_hh;
    P.w_ih = w_ih;
    P.w_f = w_f;
    P.w_i = w_i;
    P.b_f = b;
    P.b_i = b + 1;
  }
  __syncthreads();
  return P;
}

template <int HC, int D, typename S>
__global__ void __launch_bounds__(kForwardThreads) forward_kernel(MetaLSTMCudaForwardArgs<S> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const MetaLSTMParams<S> P = stage_weights<HC, D>(a.w, reinterpret_cast<S*>(smem));
  constexpr int kH = HiddenArray<HC>::size;
  const int H = P.hidden;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < a.n; j += stride) {
    // Keeps the staged weights' loads inside the loop: without it the compiler hoists all of them
    // out of the grid-stride loop (they are loop-invariant) and, with HC = 20, spills them to local
    // memory (ptxas: 7.6 KB per thread for float, 15 KB for double), read back per coordinate.
    asm volatile("" ::: "memory");
    S h[kH], c[kH], h_new[kH], c_new[kH];
    const S* h_row = a.h + j * H;
    const S* c_row = a.c + j * H;
    LO_UNROLL
    for (int m = 0; m < (HC > 0 ? HC : H); ++m) {
      h[m] = h_row[m];
      c[m] = c_row[m];
    }
    S theta_new, f, i;
    meta_lstm_forward<HC, D>(P, a.theta[j], a.grad[j], h, c, a.f_prev[j], a.i_prev[j], theta_new,
                             h_new, c_new, f, i);
    a.theta_new[j] = theta_new;
    a.f[j] = f;
    a.i[j] = i;
    LO_UNROLL
    for (int m = 0; m < (HC > 0 ? HC : H); ++m) {
      a.h_new[j * H + m] = h_new[m];
      a.c_new[j * H + m] = c_new[m];
    }
  }
}

// One block: tiles of blockDim.x coordinates, strided by the grid. Per tile, each thread writes its
// coordinate's factors and inputs (meta_lstm_packed_entry) to shared memory; then each thread adds,
// for its own packed entries, the products over the tile's coordinates in a fixed order.
template <int HC, int D, typename S>
__global__ void backward_kernel(MetaLSTMCudaBackwardArgs<S> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  S* sm = reinterpret_cast<S*>(smem);
  const MetaLSTMParams<S> P = stage_weights<HC, D>(a.w, sm);
  constexpr int kH = HiddenArray<HC>::size;
  constexpr int G = MetaLSTMInput<D>::grad_columns;
  const int H = P.hidden;
  const int B = blockDim.x;
  const int NF = meta_lstm_factor_count(H), NI = meta_lstm_input_count<D>(H);
  S* factors = sm + meta_lstm_staged_weight_elems<HC, D>(H);  // [B][NF]
  S* inputs = factors + B * NF;                     // [B][NI]
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  double* partial = a.scratch + static_cast<int64_t>(blockIdx.x) * L.size;
  for (int64_t p = threadIdx.x; p < L.size; p += B) partial[p] = 0;

  for (int64_t tile = blockIdx.x; tile * B < a.n; tile += gridDim.x) {
    const int64_t j = tile * B + threadIdx.x;
    S* my_factors = factors + threadIdx.x * NF;
    S* my_inputs = inputs + threadIdx.x * NI;
    if (j < a.n) {
      S h[kH], c[kH], g_h_new[kH], g_c_new[kH], d_h[kH], d_c[kH];
      LO_UNROLL
      for (int m = 0; m < (HC > 0 ? HC : H); ++m) {
        h[m] = a.h[j * H + m];
        c[m] = a.c[j * H + m];
        g_h_new[m] = a.g_h_new[j * H + m];
        g_c_new[m] = a.g_c_new[j * H + m];
      }
      const S theta = a.theta[j], f_prev = a.f_prev[j], i_prev = a.i_prev[j];
      S d_theta, d_grad, d_f_prev, d_i_prev;
      MetaLSTMWeightTerms<HC, D, S> t;
      meta_lstm_backward<HC, D>(P, theta, a.grad[j], h, c, f_prev, i_prev, a.g_theta_new[j],
                                g_h_new, g_c_new, a.g_f[j], a.g_i[j], d_theta, d_grad, d_h, d_c,
                                d_f_prev, d_i_prev, t);
      a.d_theta[j] = d_theta;
      a.d_grad[j] = d_grad;
      a.d_f_prev[j] = d_f_prev;
      a.d_i_prev[j] = d_i_prev;
      LO_UNROLL
      for (int m = 0; m < (HC > 0 ? HC : H); ++m) {
        a.d_h[j * H + m] = d_h[m];
        a.d_c[j * H + m] = d_c[m];
      }
      for (int r = 0; r < 4 * H; ++r) my_factors[r] = t.d_gate[r];
      my_factors[4 * H] = t.d_f;
      my_factors[4 * H + 1] = t.d_i;
      for (int m = 0; m < H; ++m) {
        my_inputs[m] = h[m];
        my_inputs[H + G + m] = t.h_new[m];
      }
      for (int d = 0; d < G; ++d) my_inputs[H + d] = t.xg[d];
      my_inputs[2 * H + G] = theta;
      my_inputs[2 * H + G + 1] = f_prev;
      my_inputs[2 * H + G + 2] = i_prev;
      my_inputs[2 * H + G + 3] = S(1);
    } else {
      // Zeros, not leftovers: 0 times a stale NaN would poison the sums.
      for (int k = 0; k < NF; ++k) my_factors[k] = S(0);
      for (int k = 0; k < NI; ++k) my_inputs[k] = S(0);
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < L.size; p += B) {
      int fi, ii;
      meta_lstm_packed_entry<D>(p, H, L, fi, ii);
      S s = 0;
      for (int b = 0; b < B; ++b) s += factors[b * NF + fi] * inputs[b * NI + ii];
      partial[p] += static_cast<double>(s);  // this block's own row: no other writer
    }
    __syncthreads();
  }
}

__global__ void reduce_partials_kernel(const double* partials, int64_t blocks, int64_t size, double* sums) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= size) return;
  double s = 0;
  for (int64_t b = 0; b < blocks; ++b) s += partials[b * size + p];
  sums[p] = s;
}

template <int D, typename S>
__global__ void weight_grads_kernel(const double* sums, MetaLSTMDeviceWeights<S> w, S* out, int64_t count) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  out[e] = static_cast<S>(meta_lstm_weight_grad<D, double>(e, w.hidden, sums, w.w_ih, w.loss[0], w.pp));
}

// Dynamic shared memory above the 48 KiB default needs an opt-in per kernel.
template <typename Kernel>
Status allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return Status::kOk;
  LO_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
  return Status::kOk;
}

int64_t blocks_for(int64_t work, int threads) { return (work + threads - 1) / threads; }

template <int HC, int D, typename S>
Status forward_launch(const MetaLSTMCudaForwardArgs<S>& a, cudaStream_t stream) {
  if (a.n == 0) return Status::kOk;
  // Enough blocks to fill the GPU; beyond that, grid-striding amortises the weight staging.
  const int64_t blocks = grid_size(a.n, kForwardThreads);
  const size_t smem = meta_lstm_staged_weight_elems<HC, D>(a.w.hidden) * sizeof(S);
  auto kernel = forward_kernel<HC, D, S>;
  const Status st = allow_shared_memory(kernel, smem);
  if (st != Status::kOk) return st;
  kernel<<<static_cast<unsigned>(blocks), kForwardThreads, smem, stream>>>(a);
  LO_RETURN_IF_LAUNCH_FAILED();
  return Status::kOk;
}

template <int HC, int D, typename S>
Status backward_launch(const MetaLSTMCudaBackwardArgs<S>& a, cudaStream_t stream) {
  const int H = a.w.hidden;
  const int threads = meta_lstm_backward_threads(H, D, sizeof(S));
  const int64_t blocks = meta_lstm_backward_blocks(a.n, H, D, sizeof(S));
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  double* sums = a.scratch + blocks * L.size;
  if (blocks > 0) {
    const size_t smem = meta_lstm_backward_shared_bytes<D>(H, threads, sizeof(S));
    auto kernel = backward_kernel<HC, D, S>;
    const Status st = allow_shared_memory(kernel, smem);
    if (st != Status::kOk) return st;
    kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(a);
    LO_RETURN_IF_LAUNCH_FAILED();
  }
  reduce_partials_kernel<<<static_cast<unsigned>(blocks_for(L.size, kElementwiseThreads)),
                           kElementwiseThreads, 0, stream>>>(a.scratch, blocks, L.size, sums);
  LO_RETURN_IF_LAUNCH_FAILED();
  const int64_t count = meta_lstm_weight_grad_count<D>(H);
  weight_grads_kernel<D, S><<<static_cast<unsigned>(blocks_for(count, kElementwiseThreads)),
                              kElementwiseThreads, 0, stream>>>(sums, a.w, a.d_weights, count);
  LO_RETURN_IF_LAUNCH_FAILED();
  return Status::kOk;
}

}  // namespace

template <typename S>
Status meta_lstm_forward_cuda(const MetaLSTMCudaForwardArgs<S>& a, cudaStream_t stream) {
  const bool ravi = a.w.input_size == 4;
  if (a.w.hidden < 1 || a.w.hidden > kMetaLSTMMaxHidden) return Status::kUnsupportedShape;
  if (a.w.hidden == 20) return ravi ? forward_launch<20, 4>(a, stream) : forward_launch<20, 1>(a, stream);
  return ravi ? forward_launch<0, 4>(a, stream) : forward_launch<0, 1>(a, stream);
}

template <typename S>
Status meta_lstm_backward_cuda(const MetaLSTMCudaBackwardArgs<S>& a, cudaStream_t stream) {
  const bool ravi = a.w.input_size == 4;
  if (a.w.hidden < 1 || a.w.hidden > kMetaLSTMMaxHidden) return Status::kUnsupportedShape;
  if (a.w.hidden == 20) return ravi ? backward_launch<20, 4>(a, stream) : backward_launch<20, 1>(a, stream);
  return ravi ? backward_launch<0, 4>(a, stream) : backward_launch<0, 1>(a, stream);
}

template Status meta_lstm_forward_cuda<float>(const MetaLSTMCudaForwardArgs<float>&, cudaStream_t);
template Status meta_lstm_forward_cuda<double>(const MetaLSTMCudaForwardArgs<double>&, cudaStream_t);
template Status meta_lstm_backward_cuda<float>(const MetaLSTMCudaBackwardArgs<float>&, cudaStream_t);
template Status meta_lstm_backward_cuda<double>(const MetaLSTMCudaBackwardArgs<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace lo
