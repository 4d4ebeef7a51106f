// CPU kernels of turtle_step and its backward: SIMD over coordinates (float), the math from
// common/turtle_math.h, OpenMP over fixed-size chunks. Torch-free; compiled once per capability
// (turtle_<cap>.cpp) and picked at run time by turtle_cpu.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/turtle_math.h"
#include "cpu/outer_product.h"
#include "cpu/parallel.h"

namespace lo {
namespace cpu {

struct TurtleKernels {
  void (*forward_f32)(const TurtleForwardArgs<float>&, const TurtleNet&, const TurtleStep<float>&);
  void (*forward_f64)(const TurtleForwardArgs<double>&, const TurtleNet&, const TurtleStep<double>&);
  void (*backward_f32)(const TurtleBackwardArgs<float>&, const TurtleNet&, const TurtleStep<float>&);
  void (*backward_f64)(const TurtleBackwardArgs<double>&, const TurtleNet&,
                       const TurtleStep<double>&);
};

TurtleKernels turtle_kernels_baseline();
TurtleKernels turtle_kernels_avx2();
TurtleKernels turtle_kernels_avx512();

// Coordinates per chunk of the backward: the unit of the deterministic weight-gradient sum, a
// function of n alone. Each chunk sums into per-lane accumulators (at most 2048 / lanes terms
// each in S), then into one double per parameter; chunks are added in index order. Neither
// depends on the thread count.
inline int64_t turtle_backward_chunk(int64_t n) { return reduction_chunk(n, 192, 2048); }
// Chunks whose double partials are held at once; bounds the scratch for the widest networks.
constexpr int64_t kTurtleChunksPerWave = 256;

#ifdef LO_CAPABILITY
namespace LO_CAPABILITY {

// Fewest coordinates worth handing to a thread in the forward (thousands of FLOPs each).
constexpr int64_t kTurtleForwardGrain = 256;

// Lanes j..j+W-1 of p, the lanes at or beyond `end` read as 0. (Such a padding lane's weight-
// gradient terms are not 0 in general: with an Inf meta-weight its activations are 0 · Inf = NaN.
// The backward zeroes them in the stage, see turtle_backward_impl.)
template <typename V, typename S, int W>
inline V load_lanes(const S* LO_RESTRICT p, int64_t j, int64_t end) {
  if constexpr (W == 1) {
    return p[j];
  } else {
    V v;
    if (j + W <= end) return simd::load<V>(p + j);
    for (int l = 0; l < W; ++l) v[l] = j + l < end ? p[j + l] : S(0);
    return v;
  }
}

template <typename V, typename S, int W>
inline void store_lanes(S* LO_RESTRICT p, int64_t j, int64_t end, V v) {
  if constexpr (W == 1) {
    p[j] = v;
  } else {
    if (j + W <= end) return simd::store(p + j, v);
    for (int l = 0; l < W; ++l)
      if (j + l < end) p[j + l] = v[l];
  }
}

// The MLP's parameters gathered from the caller's tensors into the packed layout the math reads,
// once per call (a few thousand values: well under a microsecond, against the tens of microseconds
// the torch-side concatenation of every layer took).
template <typename S>
std::unique_ptr<S[]> packed_params(const TurtleWeights<S>& w, const TurtleNet& net) {
  std::unique_ptr<S[]> packed(new S[net.num_params]);
  turtle_pack_params(w, net, packed.get());
  return packed;
}

template <int kH, typename S, typename V, int W>
void turtle_forward_impl(const TurtleForwardArgs<S>& a, const TurtleNet& net,
                         const TurtleStep<S>& st) {
  if (a.n == 0) return;
  const std::unique_ptr<S[]> packed = packed_params(a.weights, net);
  const S* const params = packed.get();
  for_each_range(a.n, kTurtleForwardGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; j += W) {
      V theta_new, m_new;
      turtle_forward<kH>(load_lanes<V, S, W>(a.theta, j, end), load_lanes<V, S, W>(a.grad, j, end),
                         load_lanes<V, S, W>(a.m, j, end), load_lanes<V, S, W>(a.alpha, j, end),
                         params, net, st, theta_new, m_new);
      store_lanes<V, S, W>(a.theta_new, j, end, theta_new);
      store_lanes<V, S, W>(a.m_new, j, end, m_new);
    }
  });
}

// Vectors of coordinates whose weight-gradient terms are staged and then added to the
// accumulators together (cpu/outer_product.h).
constexpr int kTurtleGradSlots = 16;

// dW_k += dz a^T and db_k += dz over `count` staged vectors, for every layer k: the staged dz
// (outputs x slots) and layer inputs (inputs x slots) of layer k start at k * layer_block in
// dz_block and in_block; `ones` is the bias "input" (kTurtleGradSlots vectors of 1).
template <typename V>
inline void turtle_flush_weight_terms(V* acc, const TurtleNet& net, const V* dz_block, const V* in_block,
                                      int64_t layer_block, const V* ones, int count) {
  for (int k = 0; k < net.layers; ++k) {
    const int out = net.width[k + 1], in = net.width[k];
    V* w = acc + net.offset[k];
    const V* dz = dz_block + k * layer_block;
    outer_rect<kTurtleGradSlots>(w, in, dz, out, in_block + k * layer_block, in, count);
    outer_rect<kTurtleGradSlots>(w + out * in, 1, dz, out, ones, 1, count);
  }
}

template <int kH, typename S, typename V, int W>
void turtle_backward_impl(const TurtleBackwardArgs<S>& a, const TurtleNet& net,
                          const TurtleStep<S>& st) {
  const int64_t num_params = net.num_params;
  const std::unique_ptr<S[]> packed = packed_params(a.weights, net);
  const S* const params = packed.get();
  const int64_t chunk_size = turtle_backward_chunk(a.n);
  const int64_t chunks = num_chunks(a.n, chunk_size);
  // Per layer, the staged dz (outputs x slots) and layer inputs (inputs x slots), each at most
  // `widest` rows.
  const int widest = net.max_hidden_width() > 2 ? net.max_hidden_width() : 2;
  const int64_t layer_block = static_cast<int64_t>(kTurtleGradSlots) * widest;
  std::vector<double> total(num_params, 0.0);
  std::vector<double> partial(
      (chunks < kTurtleChunksPerWave ? chunks : kTurtleChunksPerWave) * num_params);

  for (int64_t first_chunk = 0; first_chunk < chunks; first_chunk += kTurtleChunksPerWave) {
    const int64_t wave_begin = first_chunk * chunk_size;
    const int64_t wave_end_chunk =
        first_chunk + kTurtleChunksPerWave < chunks ? first_chunk + kTurtleChunksPerWave : chunks;
    const int64_t wave_n =
        (wave_end_chunk * chunk_size < a.n ? wave_end_chunk * chunk_size : a.n) - wave_begin;

    for_each_chunk(wave_n, chunk_size, [&](int64_t b, int64_t e, int64_t chunk) {
      const int64_t begin = wave_begin + b, end = wave_begin + e;
      std::vector<V> acc(num_params, V{});
      // Written before read: left uninitialised (zeroing it would cost as much as a small chunk).
      std::unique_ptr<V[]> block_rows(new V[2 * net.layers * layer_block]);
      V* const dz_block = block_rows.get();
      V* const in_block = dz_block + net.layers * layer_block;
      V acts[(kTurtleMaxLayers - 1) * kActStride<kH>];
      V ones[kTurtleGradSlots];  // the bias "input"
      for (V& one : ones) one = splat<V>(1);
      int slot = 0;  // the vector's column in the staging rows
      int valid = W;  // lanes of the vector that are coordinates (fewer in the chunk's tail)
      auto layer_grad = [&](int k, const V* dz, int out, const V* in_act, int in, auto, auto) {
        V* dz_rows = dz_block + k * layer_block + slot;
        V* in_rows = in_block + k * layer_block + slot;
        for (int o = 0; o < out; ++o) dz_rows[o * kTurtleGradSlots] = dz[o];
        for (int i = 0; i < in; ++i) in_rows[i * kTurtleGradSlots] = in_act[i];
        if (valid < W) {  // padding lanes stay out of the sums
          zero_padding_lanes(dz_rows, out, kTurtleGradSlots, valid);
          zero_padding_lanes(in_rows, in, kTurtleGradSlots, valid);
        }
      };
      auto flush = [&](int count) {
        turtle_flush_weight_terms(acc.data(), net, dz_block, in_block, layer_block, ones, count);
      };
      for (int64_t j = begin; j < end; j += W) {
        valid = end - j < W ? static_cast<int>(end - j) : W;
        V d_grad, d_m, d_alpha;
        const V d_theta_new = load_lanes<V, S, W>(a.d_theta_new, j, end);
        turtle_backward<kH>(d_theta_new, load_lanes<V, S, W>(a.d_m_new, j, end),
                            load_lanes<V, S, W>(a.grad, j, end), load_lanes<V, S, W>(a.m, j, end),
                            load_lanes<V, S, W>(a.alpha, j, end), params, net, st, acts, d_grad,
                            d_m, d_alpha, layer_grad);
        store_lanes<V, S, W>(a.d_theta, j, end, d_theta_new);
        store_lanes<V, S, W>(a.d_grad, j, end, d_grad);
        store_lanes<V, S, W>(a.d_m, j, end, d_m);
        store_lanes<V, S, W>(a.d_alpha, j, end, d_alpha);
        if (++slot == kTurtleGradSlots) {
          flush(slot);
          slot = 0;
        }
      }
      if (slot > 0) flush(slot);
      double* out = partial.data() + (chunk)*num_params;
      for (int64_t p = 0; p < num_params; ++p) {
        if constexpr (W == 1) {
          out[p] = acc[p];
        } else {
          double s = 0.0;
          for (int l = 0; l < W; ++l) s += acc[p][l];
          out[p] = s;
        }
      }
    });

    for (int64_t c = 0; c < wave_end_chunk - first_chunk; ++c)
      for (int64_t p = 0; p < num_params; ++p) total[p] += partial[c * num_params + p];
  }
  for (int k = 0; k < net.layers; ++k) {
    for (int64_t q = 0; q < net.block_size(k); ++q)
      turtle_store_param_grad(a.d_weights, a.weights, net, k, q,
                              static_cast<S>(total[net.offset[k] + q]));
  }
}

// The paper's width gets the unrolled kernel; any other shape the run-time-width one.
template <typename S, typename V, int W>
void turtle_forward_kernel(const TurtleForwardArgs<S>& a, const TurtleNet& net,
                           const TurtleStep<S>& st) {
  if (net.hidden_widths_are(kTurtlePaperWidth))
    turtle_forward_impl<kTurtlePaperWidth, S, V, W>(a, net, st);
  else
    turtle_forward_impl<0, S, V, W>(a, net, st);
}

template <typename S, typename V, int W>
void turtle_backward_kernel(const TurtleBackwardArgs<S>& a, const TurtleNet& net,
                            const TurtleStep<S>& st) {
  if (net.hidden_widths_are(kTurtlePaperWidth))
    turtle_backward_impl<kTurtlePaperWidth, S, V, W>(a, net, st);
  else
    turtle_backward_impl<0, S, V, W>(a, net, st);
}

}  // namespace LO_CAPABILITY

// float runs W lanes per instruction; double stays scalar (it serves gradcheck and tests).
TurtleKernels LO_KERNEL(turtle_kernels)() {
  constexpr int W = sizeof(LO_VEC) / sizeof(float);
  return {&LO_CAPABILITY::turtle_forward_kernel<float, LO_VEC, W>,
          &LO_CAPABILITY::turtle_forward_kernel<double, double, 1>,
          &LO_CAPABILITY::turtle_backward_kernel<float, LO_VEC, W>,
          &LO_CAPABILITY::turtle_backward_kernel<double, double, 1>};
}
#endif  // LO_CAPABILITY

}  // namespace cpu
}  // namespace lo
