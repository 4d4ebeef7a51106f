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
  double* scratch;  // meta_lstm_backward_scratch_size(n, hidden, input_size) doubles
  int64_t n;
  MetaLSTMDeviceWeights<S> w;
};

// Threads and blocks of the backward kernel: functions of n and the hidden size only (never of
// the device), so the per-block partial sums, and hence the weight gradients, are the same on every
// run and every GPU. The generic path has half the threads to fit its shared-memory tiles.
constexpr int64_t kMetaLSTMBackwardMaxBlocks = 1024;

inline int meta_lstm_backward_threads(int hidden) { return hidden == 20 ? 64 : 32; }

inline int64_t meta_lstm_backward_blocks(int64_t n, int hidden) {
  const int64_t threads = meta_lstm_backward_threads(hidden);
  const int64_t tiles = (n + threads - 1) / threads;
  return tiles < kMetaLSTMBackwardMaxBlocks ? tiles : kMetaLSTMBackwardMaxBlocks;
}

inline int64_t meta_lstm_backward_scratch_size(int64_t n, int hidden, int input_size) {
  const int64_t packed = input_size == 4 ? meta_lstm_packed_layout<4>(hidden).size
                                         : meta_lstm_packed_layout<1>(hidden).size;
  return (meta_lstm_backward_blocks(n, hidden) + 1) * packed;  // per-block partials, then the sums
}

template <typename S>
Status meta_lstm_forward_cuda(const MetaLSTMCudaForwardArgs<S>& a, cudaStream_t stream);
template <typename S>
Status meta_lstm_backward_cuda(const MetaLSTMCudaBackwardArgs<S>& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace lo
