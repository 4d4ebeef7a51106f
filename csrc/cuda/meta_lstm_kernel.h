// Launchers of the CUDA meta_lstm_step kernels (meta_lstm_kernel.cu). Torch-free: raw device
// pointers, 64-bit sizes, a stream in and a Status out; the glue (meta_lstm_cuda.cpp) does the
// checks and the allocations.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/macros.h"
#include "common/meta_lstm_math.h"

namespace lo {
namespace cuda {

// The shared weights as the torch tensors hold them (device pointers) and the call's constants.
template <typename S>
struct MetaLSTMDeviceWeights {
  const S *loss, *w_ih, *w_hh, *b_ih, *b_hh, *w_f, *b_f, *w_i, *b_i;
  int hidden;
  int input_size;  // 4 or 1
  PreprocessParams<S> pp;
};

template <typename S>
struct MetaLSTMCudaForwardArgs {
  const S *theta, *grad, *h, *c, *f_prev, *i_prev;
  S *theta_new, *h_new, *c_new, *f, *i;
  int64_t n;
  MetaLSTMDeviceWeights<S> w;
};

template <typename S>
struct MetaLSTMCudaBackwardArgs {
  const S *g_theta_new, *g_h_new, *g_c_new, *g_f, *g_i;
  const S *theta, *grad, *h, *c, *f_prev, *i_prev;
  S *d_theta, *d_grad, *d_h, *d_c, *d_f_prev, *d_i_prev;
  S* d_weights;     // the weight and loss gradients, concatenated (meta_lstm_weight_grad)
  double* scratch;  // meta_lstm_backward_scratch_size(n, hidden, input_size, sizeof(S)) doubles
  int64_t n;
  MetaLSTMDeviceWeights<S> w;
};

// Shared-memory elements of the staged weights: all of them on the unrolled (HC > 0) path, only
// the gate bias on the generic one, which reads the rest through the cache (up to 4·64·64 w_hh
// entries would not fit next to its tiles).
template <int HC, int D>
LO_HD int64_t meta_lstm_staged_weight_elems(int H) {
  return HC > 0 ? 4 * H * H + 4 * H * D + 4 * H + 2 * (H + 2) + 2 : 4 * H;
}

// Bytes of shared memory of one backward block of `threads` coordinates: the staged weights, then
// each coordinate's factors and inputs.
template <int D>
inline int64_t meta_lstm_backward_shared_bytes(int hidden, int threads, int64_t element_bytes) {
  const int64_t staged = hidden == 20 ? meta_lstm_staged_weight_elems<20, D>(hidden)
                                      : meta_lstm_staged_weight_elems<0, D>(hidden);
  return (staged + int64_t(threads) * (meta_lstm_factor_count(hidden) + meta_lstm_input_count<D>(hidden))) *
         element_bytes;
}

// Threads and blocks of the backward kernel: functions of n, the hidden size, the input mode and
// the element size only (never of the device), so the per-block partial sums, and hence the weight
// gradients, are the same on every run and every GPU. A block's staging must fit the opt-in shared
// memory of every GPU the build targets, 99 KiB on sm_86/sm_89 (163 KiB on sm_80, 227 on sm_90):
// 64 threads on the unrolled hidden-20 path (80 KiB in float64), 32 on the generic one, 16 where 32
// would not fit (hidden 64 in float64: 100 KiB).
constexpr int64_t kMetaLSTMBackwardMaxBlocks = 1024;
constexpr int64_t kMetaLSTMSharedBudget = 99 * 1024;

inline int meta_lstm_backward_threads(int hidden, int input_size, int64_t element_bytes) {
  if (hidden == 20) return 64;
  const int64_t bytes = input_size == 4 ? meta_lstm_backward_shared_bytes<4>(hidden, 32, element_bytes)
                                        : meta_lstm_backward_shared_bytes<1>(hidden, 32, element_bytes);
  return bytes <= kMetaLSTMSharedBudget ? 32 : 16;
}

inline int64_t meta_lstm_backward_blocks(int64_t n, int hidden, int input_size, int64_t element_bytes) {
  const int64_t threads = meta_lstm_backward_threads(hidden, input_size, element_bytes);
  const int64_t tiles = (n + threads - 1) / threads;
  return tiles < kMetaLSTMBackwardMaxBlocks ? tiles : kMetaLSTMBackwardMaxBlocks;
}

inline int64_t meta_lstm_backward_scratch_size(int64_t n, int hidden, int input_size, int64_t element_bytes) {
  const int64_t packed = input_size == 4 ? meta_lstm_packed_layout<4>(hidden).size
                                         : meta_lstm_packed_layout<1>(hidden).size;
  // per-block partials, then the sums
  return (meta_lstm_backward_blocks(n, hidden, input_size, element_bytes) + 1) * packed;
}

template <typename S>
Status meta_lstm_forward_cuda(const MetaLSTMCudaForwardArgs<S>& a, cudaStream_t stream);
template <typename S>
Status meta_lstm_backward_cuda(const MetaLSTMCudaBackwardArgs<S>& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace lo
