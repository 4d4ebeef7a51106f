// SPEC §3, per coordinate: one TURTLE step (gradient clamp, momentum, the MLP g_phi, the update)
// and its reverse mode. Shared by the CPU kernels (V = double, or a SIMD vector of float
// coordinates) and the CUDA kernels (V = float or double, one coordinate per thread); S is the
// scalar type of the packed MLP parameters.
//
// The MLP the kernels evaluate always has 2 inputs (g, m'): for the paper's [g, m', t] network the
// constant t column is folded into the first bias (b0 + t * W0[:, 2]) when the kernels stage the
// weights, and that column's gradient is t * d b0 (both exact in real arithmetic).
#pragma once

#include <cstdint>

#include "common/scalar_math.h"

#if defined(__CUDACC__)
#define LO_TURTLE_UNROLL _Pragma("unroll")
#else
#define LO_TURTLE_UNROLL _Pragma("GCC unroll 64")
#endif

namespace lo {

constexpr int kTurtleMaxLayers = 16;
constexpr int kTurtleMaxWidth = 64;
// The hidden width the kernels are specialised (fully unrolled) for: the paper's 5 x 20 network.
constexpr int kTurtlePaperWidth = 20;

// The MLP's shape, and the layout of the packed block in which the kernels hold its parameters
// while they run (a per-call local copy on the CPU, shared memory on the GPU): for each layer k,
// W_k (out x in, row-major as torch.nn.Linear.weight) at offset[k], then b_k (out) right after it.
struct TurtleNet {
  int layers;                           // 1..kTurtleMaxLayers
  int width[kTurtleMaxLayers + 1];      // width[0] = 2 inputs; width[k + 1] = outputs of layer k
  int64_t offset[kTurtleMaxLayers];     // start of W_k in the packed block
  int64_t num_params;                   // length of the packed block

  // Every hidden layer (there is at least one) has exactly `w` units: the unrolled kernels apply.
  LO_HD bool hidden_widths_are(int w) const {
    if (layers < 2) return false;
    for (int k = 1; k < layers; ++k)
      if (width[k] != w) return false;
    return true;
  }
  // Entries of layer k's block in the packed layout: W_k, then b_k.
  LO_HD int64_t block_size(int k) const { return int64_t(width[k + 1]) * (width[k] + 1); }
  LO_HD int max_hidden_width() const {
    int w = 1;
    for (int k = 1; k < layers; ++k) w = width[k] > w ? width[k] : w;
    return w;
  }
};

// The step's scalars, rounded once to S as torch rounds a Python float multiplying an S tensor.
template <typename S>
struct TurtleStep {
  S beta;
  S one_minus_beta;  // 1 - beta computed in double, as the reference's (1.0 - beta)
  S clamp;           // |g| bound; unused when !has_clamp
  bool has_clamp;    // grad_clamp is finite
  bool first;        // t == 0: m' = g and the m passed in is ignored

  static TurtleStep make(double beta, double grad_clamp, bool has_clamp, bool first) {
    return {static_cast<S>(beta), static_cast<S>(1.0 - beta), static_cast<S>(grad_clamp), has_clamp,
            first};
  }
};

// The MLP's weights and biases as the caller's tensors hold them: one pointer and its element
// strides per tensor, in a table passed by value (as PyTorch's fused Adam passes tensor lists), so
// that a call copies nothing on the host. W_k's element (o, i) is
// weight[k][o * row_stride[k] + i * col_stride[k]]; weight[0] may have the third (t) column.
template <typename S>
struct TurtleWeights {
  const S* weight[kTurtleMaxLayers];
  const S* bias[kTurtleMaxLayers];
  int64_t row_stride[kTurtleMaxLayers];
  int64_t col_stride[kTurtleMaxLayers];
  int64_t bias_stride[kTurtleMaxLayers];
  bool t_column;  // weight[0] has 3 columns: the input t, a constant of the call
  S t;            // the step index in S, as torch multiplies an S tensor by it
};

// Where the backward writes the weight and bias gradients: one fresh contiguous tensor each, shaped
// as the weight (t column included) or bias it belongs to.
template <typename S>
struct TurtleWeightGrads {
  S* weight[kTurtleMaxLayers];
  S* bias[kTurtleMaxLayers];
};

// b_k[o] as the math reads it: for a 3-input first layer, the t column folded in as
// b_0 + W_0[:, 2] * t (in S; the compiler may fuse it into one FMA, which only rounds less).
template <typename S>
LO_HD S turtle_packed_bias(const TurtleWeights<S>& w, int k, int64_t o) {
  const S b = w.bias[k][o * w.bias_stride[k]];
  if (k != 0 || !w.t_column) return b;
  return b + w.weight[0][o * w.row_stride[0] + 2 * w.col_stride[0]] * w.t;
}

// Entry q (0 <= q < out * in + out) of layer k's block in the packed layout of TurtleNet: W_k
// row-major, then b_k.
template <typename S>
LO_HD S turtle_packed_param(const TurtleWeights<S>& w, const TurtleNet& net, int k, int64_t q) {
  const int64_t in = net.width[k], out = net.width[k + 1];
  if (q >= out * in) return turtle_packed_bias(w, k, q - out * in);
  const int64_t o = q / in, i = q - o * in;
  return w.weight[k][o * w.row_stride[k] + i * w.col_stride[k]];
}

// The packed block's entry q of layer k receives the gradient value g (a sum over coordinates):
// stored where the caller's tensor has it, plus the t column's t * d b_0 for the first bias.
template <typename S>
LO_HD void turtle_store_param_grad(const TurtleWeightGrads<S>& d, const TurtleWeights<S>& w,
                                   const TurtleNet& net, int k, int64_t q, S g) {
  const int64_t in = net.width[k], out = net.width[k + 1];
  const int64_t row = k == 0 && w.t_column ? 3 : in;  // the gradient has the weight's own columns
  if (q < out * in) {
    const int64_t o = q / in, i = q - o * in;
    d.weight[k][o * row + i] = g;
    return;
  }
  const int64_t o = q - out * in;
  d.bias[k][o] = g;
  if (k == 0 && w.t_column) d.weight[0][o * 3 + 2] = g * w.t;
}

// The whole packed block from the table (the CPU kernels' per-call copy), row by row.
template <typename S>
inline void turtle_pack_params(const TurtleWeights<S>& w, const TurtleNet& net, S* packed) {
  for (int k = 0; k < net.layers; ++k) {
    const int64_t in = net.width[k], out = net.width[k + 1];
    S* block = packed + net.offset[k];
    for (int64_t o = 0; o < out; ++o) {
      const S* row = w.weight[k] + o * w.row_stride[k];
      for (int64_t i = 0; i < in; ++i) block[o * in + i] = row[i * w.col_stride[k]];
      block[out * in + o] = turtle_packed_bias(w, k, o);
    }
  }
}

// What the CPU and CUDA kernels read and write: n coordinates, contiguous, and the MLP's table.
template <typename S>
struct TurtleForwardArgs {
  const S* theta;
  const S* grad;
  const S* m;
  const S* alpha;
  TurtleWeights<S> weights;
  S* theta_new;
  S* m_new;
  int64_t n;
};

template <typename S>
struct TurtleBackwardArgs {
  const S* d_theta_new;
  const S* d_m_new;
  const S* grad;
  const S* m;
  const S* alpha;
  TurtleWeights<S> weights;
  S* d_theta;
  S* d_grad;
  S* d_m;
  S* d_alpha;
  TurtleWeightGrads<S> d_weights;  // the sums over all n coordinates
  int64_t n;
};

// Runs f(0), ..., f(n - 1); completely unrolled when the count is a compile-time constant kN > 0,
// so that small per-coordinate arrays indexed by i stay in registers.
template <int kN, typename F>
LO_HD void for_n(int n, const F& f) {
  if constexpr (kN > 0) {
    LO_TURTLE_UNROLL
    for (int i = 0; i < kN; ++i) f(i);
  } else {
    for (int i = 0; i < n; ++i) f(i);
  }
}

template <int kN>
struct Count {
  static constexpr int value = kN;  // a layer width: compile-time when > 0, else from TurtleNet
};

// ReLU that keeps NaN (torch.relu(NaN) is NaN; a plain x > 0 ? x : 0 would turn it into 0).
template <typename V>
LO_HD V relu_keep_nan(V x) {
  return select(x < splat<V>(0), splat<V>(0), x);
}

// Register blocks (kRegisterBlockOf) of a compile-time count kN, or one block of the run-time
// count n when kN == 0: f(first, count, Count<block>) for each.
template <int kN, typename V, typename F>
LO_HD void for_register_blocks(int n, const F& f) {
  constexpr int kBlock = kRegisterBlockOf<kN, V>;
  constexpr int kBlocks = kN > 0 ? kN / kBlock : 1;
  for_n<kBlocks>(kBlocks, [&](int block) { f(block * kBlock, kN > 0 ? kBlock : n, Count<kBlock>{}); });
}

// z = W a + b for one layer with W (out x in) row-major, then ReLU when kRelu. Input by input
// (column by column of W): the `out` sums are independent chains that keep the FMA units busy,
// where one dot product per output would wait on its own latency; in register blocks of outputs
// (kRegisterBlock in common/scalar_math.h). Each z[o] still adds b[o], W[o][0] a[0],
// W[o][1] a[1], ... in that order, whatever the blocking.
template <int kIn, int kOut, bool kRelu, typename V, typename S>
LO_HD void turtle_dense(const S* LO_RESTRICT w, const S* LO_RESTRICT b, const V* a, V* z, int in,
                        int out) {
  const int stride = kIn > 0 ? kIn : in;
  for_register_blocks<kOut, V>(out, [&](int first, int count, auto block) {
    constexpr int kBlock = decltype(block)::value;
    V* zb = z + first;
    const S* wb = w + first * stride;
    for_n<kBlock>(count, [&](int o) { zb[o] = splat<V>(b[first + o]); });
    for_n<kIn>(in, [&](int i) {
      const V a_i = a[i];
      for_n<kBlock>(count, [&](int o) { zb[o] += splat<V>(wb[o * stride + i]) * a_i; });
    });
  });
  if (kRelu) for_n<kOut>(out, [&](int o) { z[o] = relu_keep_nan(z[o]); });
}

// da = W^T dz: the gradient reaching a layer's inputs, in register blocks of inputs. Each da[i]
// adds W[0][i] dz[0], W[1][i] dz[1], ... in that order.
template <int kIn, int kOut, typename V, typename S>
LO_HD void turtle_dense_transpose(const S* LO_RESTRICT w, const V* dz, V* da, int in, int out) {
  const int stride = kIn > 0 ? kIn : in;
  for_register_blocks<kIn, V>(in, [&](int first, int count, auto block) {
    constexpr int kBlock = decltype(block)::value;
    V* dab = da + first;
    const S* wb = w + first;
    for_n<kBlock>(count, [&](int i) { dab[i] = splat<V>(wb[i]) * dz[0]; });
    for (int o = 1; o < (kOut > 0 ? kOut : out); ++o) {
      for_n<kBlock>(count, [&](int i) { dab[i] += splat<V>(wb[o * stride + i]) * dz[o]; });
    }
  });
}

template <typename V, typename S>
LO_HD V turtle_clamp(V grad, const TurtleStep<S>& st) {
  if (!st.has_clamp) return grad;
  const V c = splat<V>(st.clamp), minus_c = splat<V>(-st.clamp);
  // NaN fails both comparisons and stays NaN, as torch.clamp.
  const V g = select(grad > c, c, grad);
  return select(g < minus_c, minus_c, g);
}

// torch.clamp's derivative: 1 where -c <= grad <= c (bounds included), 0 elsewhere and at NaN.
template <typename V, typename S>
LO_HD V turtle_clamp_backward(V grad, V d_g, const TurtleStep<S>& st) {
  if (!st.has_clamp) return d_g;
  const V inside = select(grad >= splat<V>(-st.clamp), d_g, splat<V>(0));
  return select(grad <= splat<V>(st.clamp), inside, splat<V>(0));
}

template <typename V, typename S>
LO_HD V turtle_momentum(V g, V m, const TurtleStep<S>& st) {
  return st.first ? g : splat<V>(st.beta) * m + splat<V>(st.one_minus_beta) * g;
}

// Widths of the three kinds of layer as compile-time counts where kH > 0 fixes the hidden width.
template <int kH>
constexpr int kActStride = kH > 0 ? kH : kTurtleMaxWidth;

// u = MLP(g, m'). kH > 0: every hidden layer has kH units and there are at least 2 layers
// (TurtleNet::hidden_widths_are(kH)); kH == 0: any shape the wrapper allows, widths at run time.
template <int kH, typename V, typename S>
LO_HD V turtle_mlp(V g, V m_new, const S* LO_RESTRICT params, const TurtleNet& net) {
  const int last = net.layers - 1;
  const V inputs[2] = {g, m_new};
  V u;
  if (kH == 0 && last == 0) {
    turtle_dense<2, 1, false>(params, params + 2, inputs, &u, 2, 1);
    return u;
  }
  V a[kActStride<kH>], z[kActStride<kH>];
  turtle_dense<2, kH, true>(params, params + 2 * net.width[1], inputs, a, 2, net.width[1]);
  for (int k = 1; k < last; ++k) {
    const int in = net.width[k], out = net.width[k + 1];
    const S* w = params + net.offset[k];
    turtle_dense<kH, kH, true>(w, w + out * in, a, z, in, out);
    for_n<kH>(out, [&](int o) { a[o] = z[o]; });
  }
  const S* w = params + net.offset[last];
  turtle_dense<kH, 1, false>(w, w + net.width[last], a, &u, net.width[last], 1);
  return u;
}

// The forward step of one coordinate (or one SIMD vector of coordinates).
template <int kH, typename V, typename S>
LO_HD void turtle_forward(V theta, V grad, V m, V alpha, const S* LO_RESTRICT params,
                          const TurtleNet& net, const TurtleStep<S>& st, V& theta_new, V& m_new) {
  const V g = turtle_clamp(grad, st);
  m_new = turtle_momentum(g, m, st);
  theta_new = theta + alpha * turtle_mlp<kH>(g, m_new, params, net);
}

// Reverse mode through the MLP given dL/du. Recomputes the hidden activations into `acts`
// (layers - 1 rows of kActStride<kH> values: the only per-coordinate memory), then walks the
// layers backwards. For every layer k it calls
//   layer_grad(k, dz, out, a, in, Count<kOut>, Count<kIn>)
// with dz = dL/d(pre-activation) (out values) and a = the layer's inputs (in values), from which
// the caller accumulates dW_k += dz a^T and db_k += dz its own way (SIMD lanes on the CPU, a block
// reduction on the GPU). Returns u, and the gradients reaching the inputs g and m'.
template <int kH, typename V, typename S, typename LayerGrad>
LO_HD V turtle_mlp_backward(V g, V m_new, V d_u, const S* LO_RESTRICT params, const TurtleNet& net,
                            V* LO_RESTRICT acts, V& d_g, V& d_m_new, const LayerGrad& layer_grad) {
  constexpr int kStride = kActStride<kH>;
  const int last = net.layers - 1;
  const V inputs[2] = {g, m_new};
  V u;
  V da[kStride > 2 ? kStride : 2];
  if (kH == 0 && last == 0) {
    turtle_dense<2, 1, false>(params, params + 2, inputs, &u, 2, 1);
    const V dz[1] = {d_u};
    layer_grad(0, dz, 1, inputs, 2, Count<1>{}, Count<2>{});
    turtle_dense_transpose<2, 1>(params, dz, da, 2, 1);
    d_g = da[0];
    d_m_new = da[1];
    return u;
  }

  turtle_dense<2, kH, true>(params, params + 2 * net.width[1], inputs, acts, 2, net.width[1]);
  for (int k = 1; k < last; ++k) {
    const int in = net.width[k], out = net.width[k + 1];
    const S* w = params + net.offset[k];
    turtle_dense<kH, kH, true>(w, w + out * in, acts + (k - 1) * kStride, acts + k * kStride, in, out);
  }
  {
    const int in = net.width[last];
    const S* w = params + net.offset[last];
    const V* a = acts + (last - 1) * kStride;
    turtle_dense<kH, 1, false>(w, w + in, a, &u, in, 1);
    const V dz[1] = {d_u};
    layer_grad(last, dz, 1, a, in, Count<1>{}, Count<kH>{});
    turtle_dense_transpose<kH, 1>(w, dz, da, in, 1);
  }

  V dz[kStride];
  // ReLU's derivative as torch.relu's backward: 0 where the output is <= 0, passed on elsewhere
  // (NaN included).
  auto relu_backward = [&](const V* h, int out) {
    for_n<kH>(out, [&](int o) { dz[o] = select(h[o] <= splat<V>(0), splat<V>(0), da[o]); });
  };
  for (int k = last - 1; k >= 1; --k) {
    const int in = net.width[k], out = net.width[k + 1];
    const V* a = acts + (k - 1) * kStride;
    relu_backward(acts + k * kStride, out);
    layer_grad(k, dz, out, a, in, Count<kH>{}, Count<kH>{});
    turtle_dense_transpose<kH, kH>(params + net.offset[k], dz, da, in, out);
  }
  relu_backward(acts, net.width[1]);
  layer_grad(0, dz, net.width[1], inputs, 2, Count<kH>{}, Count<2>{});
  turtle_dense_transpose<2, kH>(params, dz, da, 2, net.width[1]);
  d_g = da[0];
  d_m_new = da[1];
  return u;
}

// Per-coordinate gradients of one step. The weight gradients go to layer_grad (see above).
template <int kH, typename V, typename S, typename LayerGrad>
LO_HD void turtle_backward(V d_theta_new, V d_m_new_out, V grad, V m, V alpha,
                           const S* LO_RESTRICT params, const TurtleNet& net,
                           const TurtleStep<S>& st, V* LO_RESTRICT acts, V& d_grad, V& d_m,
                           V& d_alpha, const LayerGrad& layer_grad) {
  const V g = turtle_clamp(grad, st);
  const V m_new = turtle_momentum(g, m, st);
  V d_g, d_m_mlp;
  const V u = turtle_mlp_backward<kH>(g, m_new, alpha * d_theta_new, params, net, acts, d_g, d_m_mlp,
                                      layer_grad);
  d_alpha = d_theta_new * u;
  const V d_m_new = d_m_mlp + d_m_new_out;
  if (st.first) {  // m' = g: the m passed in does not matter
    d_g += d_m_new;
    d_m = splat<V>(0);
  } else {
    d_g += splat<V>(st.one_minus_beta) * d_m_new;
    d_m = splat<V>(st.beta) * d_m_new;
  }
  d_grad = turtle_clamp_backward(grad, d_g, st);
}

}  // namespace lo
