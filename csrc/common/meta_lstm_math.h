// SPEC §2, per coordinate: one step of the meta-learner LSTM and its reverse mode.
// Written once for the CPU kernels (V = a SIMD vector of float coordinates, or a double scalar)
// and the CUDA kernels (V = float or double scalar). S is the storage type of the weights, which
// every coordinate shares, so a weight is a scalar broadcast against V.
//
// HC is the hidden size when it is known at compile time (20, the paper's: every loop below is
// then unrolled and the per-unit arrays live in registers), or 0 for the generic path, where the
// hidden size is P.hidden (at most kMetaLSTMMaxHidden) and the arrays are sized for the maximum.
// D is the layer-1 input size: 4 (Ravi: [pre(L)1, pre(L)2, pre(g)1, pre(g)2]) or 1 (raw gradient).
//
// The loss enters layer 1 through the same two numbers for every coordinate, so its term is
// folded into the gate bias once per call (meta_lstm_gate_bias) and its gradient is recovered
// from the summed bias gradient (meta_lstm_weight_grad): per coordinate, layer 1 only sees the
// gradient columns of w_ih.
#pragma once

#include <cstdint>

#include "common/preprocess_math.h"
#include "common/scalar_math.h"

// LO_UNROLL: loops over the hidden units' inputs, unrolled so that the H values indexed by the loop
// stay in registers. LO_UNROLL_OUTER: the loops around them; on the CPU they stay rolled (the
// arrays they index live in L1, and unrolling 4H x H bodies costs minutes of compile time), on
// CUDA they are unrolled so that per-thread arrays are registers rather than local memory.
#if defined(__CUDACC__)
#define LO_UNROLL _Pragma("unroll")
#define LO_UNROLL_OUTER _Pragma("unroll")
#else
#define LO_UNROLL _Pragma("GCC unroll 64")
#define LO_UNROLL_OUTER
#endif

namespace lo {

constexpr int kMetaLSTMMaxHidden = 64;

template <int HC>
struct HiddenArray {
  static constexpr int size = HC > 0 ? HC : kMetaLSTMMaxHidden;
};

// Layer-1 input columns that vary per coordinate: pre(g)1, pre(g)2 (D = 4) or g (D = 1), found at
// column kGradColumn<D> of w_ih.
template <int D>
struct MetaLSTMInput {
  static_assert(D == 1 || D == 4, "layer-1 input size is 4 (preprocessed) or 1 (raw gradient)");
  static constexpr int grad_columns = D == 4 ? 2 : 1;
  static constexpr int first_grad_column = D == 4 ? 2 : 0;
};

// Pointers to the shared weights (row-major, as the torch tensors) and the call's constants.
template <typename S>
struct MetaLSTMParams {
  const S* w_ih;       // (4H, D)
  const S* w_hh;       // (4H, H)
  const S* gate_bias;  // (4H,) b_ih + b_hh, plus w_ih's loss columns · pre(loss) when D = 4
  const S* w_f;        // (H + 2,) layer-2 forget gate: [h', theta, f_prev]
  const S* b_f;        // (1,)
  const S* w_i;        // (H + 2,) layer-2 input gate: [h', theta, i_prev]
  const S* b_i;        // (1,)
  int hidden;          // H
  PreprocessParams<S> pp;
};

// Gate row r of layer 1's effective bias (rows ordered i, f, g, o as torch.nn.LSTMCell).
// `loss` is the loss value; A is the type the caller wants the sum in.
template <int D, typename A, typename S>
LO_HD A meta_lstm_gate_bias(int r, const S* w_ih, const S* b_ih, const S* b_hh, S loss,
                            const PreprocessParams<S>& pp) {
  A bias = static_cast<A>(b_ih[r]) + static_cast<A>(b_hh[r]);
  if (D == 4) {
    S l1, l2;
    preprocess_forward(loss, pp, l1, l2);
    bias += static_cast<A>(w_ih[r * 4 + 0]) * static_cast<A>(l1) +
            static_cast<A>(w_ih[r * 4 + 1]) * static_cast<A>(l2);
  }
  return bias;
}

// The per-coordinate layer-1 inputs derived from the gradient.
template <int D, typename V, typename S>
LO_HD void meta_lstm_grad_input(V grad, const PreprocessParams<S>& pp, V* xg) {
  if (D == 4) {
    preprocess_forward(grad, pp, xg[0], xg[1]);
  } else {
    xg[0] = grad;
  }
}

// Pre-activation of gate row r: bias + w_ih[r, grad columns] · xg + w_hh[r] · h.
template <int HC, int D, typename V, typename S>
LO_HD V meta_lstm_gate(int r, const MetaLSTMParams<S>& P, const V* xg, const V* h) {
  using In = MetaLSTMInput<D>;
  const int H = HC > 0 ? HC : P.hidden;
  V a = splat<V>(P.gate_bias[r]);
  LO_UNROLL
  for (int d = 0; d < In::grad_columns; ++d) a += splat<V>(P.w_ih[r * D + In::first_grad_column + d]) * xg[d];
  const S* w = P.w_hh + static_cast<int64_t>(r) * H;
  LO_UNROLL
  for (int m = 0; m < H; ++m) a += splat<V>(w[m]) * h[m];
  return a;
}

// Gate q of a unit (rows ordered i, f, g, o) from its pre-activation: the cell input g goes
// through tanh, the three others through the sigmoid.
template <typename V>
LO_HD V meta_lstm_activate_gate(int q, V a) {
  return q == 2 ? lo::tanh(a) : sigmoid(a);
}

// A layer-1 cell from its four gate activations: the new cell and hidden values.
template <typename V>
LO_HD void meta_lstm_cell(V gate_i, V gate_f, V gate_g, V gate_o, V c, V& c_new, V& tanh_c_new,
                          V& h_new) {
  c_new = gate_f * c + gate_i * gate_g;
  tanh_c_new = lo::tanh(c_new);
  h_new = gate_o * tanh_c_new;
}

// Layer-1 cell for hidden unit k: the four gate activations, the new cell and hidden values.
template <int HC, int D, typename V, typename S>
LO_HD void meta_lstm_unit(int k, const MetaLSTMParams<S>& P, const V* xg, const V* h, V c,
                          V& gate_i, V& gate_f, V& gate_g, V& gate_o, V& c_new, V& tanh_c_new, V& h_new) {
  const int H = HC > 0 ? HC : P.hidden;
  gate_i = meta_lstm_activate_gate(0, meta_lstm_gate<HC, D>(k, P, xg, h));
  gate_f = meta_lstm_activate_gate(1, meta_lstm_gate<HC, D>(H + k, P, xg, h));
  gate_g = meta_lstm_activate_gate(2, meta_lstm_gate<HC, D>(2 * H + k, P, xg, h));
  gate_o = meta_lstm_activate_gate(3, meta_lstm_gate<HC, D>(3 * H + k, P, xg, h));
  meta_lstm_cell(gate_i, gate_f, gate_g, gate_o, c, c_new, tanh_c_new, h_new);
}

// Layer 2's pre-activations f and i from f_sum = w_f[:H] · h_new and i_sum = w_i[:H] · h_new.
template <typename V, typename S>
LO_HD void meta_lstm_layer2(const MetaLSTMParams<S>& P, int H, V f_sum, V i_sum, V theta, V f_prev,
                            V i_prev, V& f, V& i) {
  f = f_sum + splat<V>(P.w_f[H]) * theta + splat<V>(P.w_f[H + 1]) * f_prev + splat<V>(P.b_f[0]);
  i = i_sum + splat<V>(P.w_i[H]) * theta + splat<V>(P.w_i[H + 1]) * i_prev + splat<V>(P.b_i[0]);
}

// The update itself, from the layer-2 gates σ(f) and σ(i).
template <typename V>
LO_HD V meta_lstm_update(V sigmoid_f, V sigmoid_i, V theta, V grad) {
  return sigmoid_f * theta - sigmoid_i * grad;
}

// Reverse of layer 2 (theta_new = σ(f) theta - σ(i) grad, with the outputs f and i themselves
// also differentiated): d_f and d_i, the gradients of f and i's pre-activation sums, and the
// layer-2 parts of theta's, f_prev's and i_prev's gradients.
template <typename V, typename S>
LO_HD void meta_lstm_layer2_backward(const MetaLSTMParams<S>& P, int H, V theta, V grad, V sf, V si,
                                     V g_theta_new, V g_f, V g_i, V& d_f, V& d_i, V& d_theta,
                                     V& d_f_prev, V& d_i_prev) {
  const V one = splat<V>(1);
  d_f = g_f + g_theta_new * theta * sf * (one - sf);
  d_i = g_i - g_theta_new * grad * si * (one - si);
  d_theta = g_theta_new * sf + d_f * splat<V>(P.w_f[H]) + d_i * splat<V>(P.w_i[H]);
  d_f_prev = d_f * splat<V>(P.w_f[H + 1]);
  d_i_prev = d_i * splat<V>(P.w_i[H + 1]);
}

// Reverse of unit k's cell (h_new = o tanh(c_new), c_new = f c + i g), given the gradients that
// reach h_new (from outside and through layer 2) and c_new: the gradient of c and of the four
// gate pre-activations.
template <typename V>
LO_HD void meta_lstm_cell_backward(V d_h_new, V g_c_new, V gate_i, V gate_f, V gate_g, V gate_o,
                                   V c, V tanh_c, V& d_c, V& d_a_i, V& d_a_f, V& d_a_g, V& d_a_o) {
  const V one = splat<V>(1);
  const V d_c_new = g_c_new + d_h_new * gate_o * (one - tanh_c * tanh_c);
  d_c = d_c_new * gate_f;
  d_a_i = d_c_new * gate_g * gate_i * (one - gate_i);
  d_a_f = d_c_new * c * gate_f * (one - gate_f);
  d_a_g = d_c_new * gate_i * (one - gate_g * gate_g);
  d_a_o = d_h_new * tanh_c * gate_o * (one - gate_o);
}

// Forward: (theta, grad, h, c, f_prev, i_prev) -> (theta_new, h_new, c_new, f, i), f and i before
// the sigmoid. h, c, h_new, c_new hold H values each.
template <int HC, int D, typename V, typename S>
LO_HD void meta_lstm_forward(const MetaLSTMParams<S>& P, V theta, V grad, const V* h, const V* c,
                             V f_prev, V i_prev, V& theta_new, V* h_new, V* c_new, V& f, V& i) {
  const int H = HC > 0 ? HC : P.hidden;
  V xg[MetaLSTMInput<D>::grad_columns];
  meta_lstm_grad_input<D>(grad, P.pp, xg);
  V f_acc = splat<V>(0), i_acc = splat<V>(0);
  LO_UNROLL_OUTER
  for (int k = 0; k < H; ++k) {
    V gi, gf, gg, go, tc;
    meta_lstm_unit<HC, D>(k, P, xg, h, c[k], gi, gf, gg, go, c_new[k], tc, h_new[k]);
    f_acc += splat<V>(P.w_f[k]) * h_new[k];
    i_acc += splat<V>(P.w_i[k]) * h_new[k];
  }
  meta_lstm_layer2(P, H, f_acc, i_acc, theta, f_prev, i_prev, f, i);
  theta_new = meta_lstm_update(sigmoid(f), sigmoid(i), theta, grad);
}

// What one coordinate contributes to the weight gradients: every weight gradient is a sum over
// coordinates of (a per-coordinate factor) x (a per-coordinate input), laid out in
// meta_lstm_packed_layout's order.
template <int HC, int D, typename V>
struct MetaLSTMWeightTerms {
  static constexpr int kH = HiddenArray<HC>::size;
  V d_gate[4 * kH];  // d loss / d layer-1 gate pre-activation, rows i, f, g, o
  V d_f, d_i;        // d loss / d layer-2 pre-activations f, i
  V xg[MetaLSTMInput<D>::grad_columns];
  V h_new[kH];
};

// Through the gate pre-activations back to layer 1's inputs: d_h = w_hh^T d_gate, and d_xg for
// the per-coordinate inputs xg (w_ih's gradient columns, transposed, times d_gate).
template <int HC, int D, typename V, typename S>
LO_HD void meta_lstm_gates_backward(const MetaLSTMParams<S>& P, const V* d_gate, V* d_h, V* d_xg) {
  using In = MetaLSTMInput<D>;
  constexpr int kH = HiddenArray<HC>::size;
  const int H = HC > 0 ? HC : P.hidden;
  // The hidden-20 kernel's 20 + G accumulators in register blocks (kRegisterBlock): one pass over
  // the rows per block of hidden units, the xg columns with the first. Any other width: one pass.
  constexpr int kBlock = HC > 0 ? kRegisterBlockOf<HC, V> : kH;
  constexpr int kBlocks = kH / kBlock;
  LO_UNROLL
  for (int block = 0; block < kBlocks; ++block) {
    const int first = block * kBlock;
    const int count = HC > 0 ? kBlock : H;
    V d_h_acc[kBlock];  // local, so that it can live in registers across the loop over rows
    LO_UNROLL
    for (int m = 0; m < count; ++m) d_h_acc[m] = splat<V>(0);
    V d_xg_acc[In::grad_columns];
    LO_UNROLL
    for (int d = 0; d < In::grad_columns; ++d) d_xg_acc[d] = splat<V>(0);
    LO_UNROLL_OUTER
    for (int r = 0; r < 4 * H; ++r) {
      const V dr = d_gate[r];
      const S* w = P.w_hh + static_cast<int64_t>(r) * H + first;
      LO_UNROLL
      for (int m = 0; m < count; ++m) d_h_acc[m] += dr * splat<V>(w[m]);
      if (block == 0) {
        LO_UNROLL
        for (int d = 0; d < In::grad_columns; ++d)
          d_xg_acc[d] += dr * splat<V>(P.w_ih[r * D + In::first_grad_column + d]);
      }
    }
    LO_UNROLL
    for (int m = 0; m < count; ++m) d_h[first + m] = d_h_acc[m];
    if (block == 0) {
      LO_UNROLL
      for (int d = 0; d < In::grad_columns; ++d) d_xg[d] = d_xg_acc[d];
    }
  }
}

// d loss / d grad: the direct path (theta_new = ... - σ(i) grad) plus the one through xg.
template <int D, typename V, typename S>
LO_HD V meta_lstm_grad_backward(const PreprocessParams<S>& pp, V grad, V g_theta_new, V si,
                                const V* d_xg) {
  const V d_grad_direct = -(g_theta_new * si);
  if (D == 4) return d_grad_direct + preprocess_backward(grad, d_xg[0], d_xg[1], pp);
  return d_grad_direct + d_xg[0];
}

// Backward of meta_lstm_forward, recomputing its internals from the inputs. Takes the output
// gradients (g_*), returns the per-coordinate input gradients (d_*) and fills `terms`.
template <int HC, int D, typename V, typename S>
LO_HD void meta_lstm_backward(const MetaLSTMParams<S>& P, V theta, V grad, const V* h, const V* c,
                              V f_prev, V i_prev, V g_theta_new, const V* g_h_new, const V* g_c_new,
                              V g_f, V g_i, V& d_theta, V& d_grad, V* d_h, V* d_c, V& d_f_prev,
                              V& d_i_prev, MetaLSTMWeightTerms<HC, D, V>& terms) {
  using In = MetaLSTMInput<D>;
  constexpr int kH = HiddenArray<HC>::size;
  const int H = HC > 0 ? HC : P.hidden;

  // Recompute the forward pass, keeping what the reverse pass needs.
  V gate_i[kH], gate_f[kH], gate_g[kH], gate_o[kH], tanh_c[kH];
  meta_lstm_grad_input<D>(grad, P.pp, terms.xg);
  V f = splat<V>(0), i = splat<V>(0);
  LO_UNROLL_OUTER
  for (int k = 0; k < H; ++k) {
    V c_new;
    meta_lstm_unit<HC, D>(k, P, terms.xg, h, c[k], gate_i[k], gate_f[k], gate_g[k], gate_o[k],
                          c_new, tanh_c[k], terms.h_new[k]);
    f += splat<V>(P.w_f[k]) * terms.h_new[k];
    i += splat<V>(P.w_i[k]) * terms.h_new[k];
  }
  meta_lstm_layer2(P, H, f, i, theta, f_prev, i_prev, f, i);
  const V sf = sigmoid(f), si = sigmoid(i);

  V d_f, d_i;
  meta_lstm_layer2_backward(P, H, theta, grad, sf, si, g_theta_new, g_f, g_i, d_f, d_i, d_theta,
                            d_f_prev, d_i_prev);
  terms.d_f = d_f;
  terms.d_i = d_i;

  LO_UNROLL_OUTER
  for (int k = 0; k < H; ++k) {
    const V d_h_new = g_h_new[k] + d_f * splat<V>(P.w_f[k]) + d_i * splat<V>(P.w_i[k]);
    meta_lstm_cell_backward(d_h_new, g_c_new[k], gate_i[k], gate_f[k], gate_g[k], gate_o[k], c[k],
                            tanh_c[k], d_c[k], terms.d_gate[k], terms.d_gate[H + k],
                            terms.d_gate[2 * H + k], terms.d_gate[3 * H + k]);
  }

  V d_xg[In::grad_columns];
  meta_lstm_gates_backward<HC, D>(P, terms.d_gate, d_h, d_xg);
  d_grad = meta_lstm_grad_backward<D>(P.pp, grad, g_theta_new, si, d_xg);
}

// The packed vector of weight-gradient sums, one entry per (factor, input) product; the CPU and
// CUDA kernels reduce into it and meta_lstm_weight_grad unpacks it. Offsets for hidden size H:
//   [hh, hh + 4H·H)          d_gate[r] · h[m]           (w_hh, row-major)
//   [x,  x + 4H·G)           d_gate[r] · xg[d]          (w_ih's gradient columns; G = 2 or 1)
//   [bias, bias + 4H)        d_gate[r]                  (b_ih and b_hh)
//   [wf, wf + H + 3)         d_f · [h_new, theta, f_prev, 1]
//   [wi, wi + H + 3)         d_i · [h_new, theta, i_prev, 1]
struct MetaLSTMPackedLayout {
  int64_t hh, x, bias, wf, wi, size;
};

template <int D>
LO_HD MetaLSTMPackedLayout meta_lstm_packed_layout(int H) {
  const int64_t G = MetaLSTMInput<D>::grad_columns;
  MetaLSTMPackedLayout L;
  L.hh = 0;
  L.x = 4 * H * H;
  L.bias = L.x + 4 * H * G;
  L.wf = L.bias + 4 * H;
  L.wi = L.wf + H + 3;
  L.size = L.wi + H + 3;
  return L;
}

// Packed entry p as a product factors[fi] * inputs[ii], for kernels that hold one coordinate's
//   factors = [d_gate (4H), d_f, d_i]
//   inputs  = [h (H), xg (G), h_new (H), theta, f_prev, i_prev, 1]
// as arrays (the CUDA kernel stages them in shared memory).
LO_HD int meta_lstm_factor_count(int H) { return 4 * H + 2; }
template <int D>
LO_HD int meta_lstm_input_count(int H) { return 2 * H + MetaLSTMInput<D>::grad_columns + 4; }

template <int D>
LO_HD void meta_lstm_packed_entry(int64_t p, int H, const MetaLSTMPackedLayout& L, int& fi, int& ii) {
  constexpr int G = MetaLSTMInput<D>::grad_columns;
  const int h_new0 = H + G, theta_i = 2 * H + G, one = theta_i + 3;
  if (p < L.x) {
    fi = static_cast<int>(p / H);
    ii = static_cast<int>(p % H);
  } else if (p < L.bias) {
    fi = static_cast<int>((p - L.x) / G);
    ii = H + static_cast<int>((p - L.x) % G);
  } else if (p < L.wf) {
    fi = static_cast<int>(p - L.bias);
    ii = one;
  } else {
    const bool forget = p < L.wi;
    const int k = static_cast<int>(p - (forget ? L.wf : L.wi));
    fi = 4 * H + (forget ? 0 : 1);
    ii = k < H ? h_new0 + k : k == H ? theta_i : k == H + 1 ? theta_i + (forget ? 1 : 2) : one;
  }
}

// Element e of the concatenated weight/loss gradients
//   [loss (1), w_ih (4H·D), w_hh (4H·H), b_ih (4H), b_hh (4H), w_f (H+2), b_f (1), w_i (H+2), b_i (1)]
// (schema order) from the packed sums. The loss gradient is zero for D = 1; for D = 4 it goes
// through w_ih's loss columns and the preprocessing of the loss.
template <int D, typename A, typename S>
LO_HD A meta_lstm_weight_grad(int64_t e, int H, const A* sums, const S* w_ih, S loss,
                              const PreprocessParams<S>& pp) {
  using In = MetaLSTMInput<D>;
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  const int64_t R = 4 * H;
  if (e == 0) {
    if (D == 1) return A(0);
    A g1 = 0, g2 = 0;
    for (int64_t r = 0; r < R; ++r) {
      g1 += sums[L.bias + r] * static_cast<A>(w_ih[r * D + 0]);
      g2 += sums[L.bias + r] * static_cast<A>(w_ih[r * D + 1]);
    }
    return static_cast<A>(preprocess_backward(loss, static_cast<S>(g1), static_cast<S>(g2), pp));
  }
  e -= 1;
  if (e < R * D) {  // w_ih
    const int64_t r = e / D, d = e % D;
    if (d >= In::first_grad_column) return sums[L.x + r * In::grad_columns + (d - In::first_grad_column)];
    S l[2];
    preprocess_forward(loss, pp, l[0], l[1]);
    return sums[L.bias + r] * static_cast<A>(l[d]);
  }
  e -= R * D;
  if (e < R * H) return sums[L.hh + e];  // w_hh
  e -= R * H;
  if (e < R) return sums[L.bias + e];  // b_ih
  e -= R;
  if (e < R) return sums[L.bias + e];  // b_hh
  e -= R;
  if (e < H + 3) return sums[L.wf + e];  // w_f then b_f
  e -= H + 3;
  return sums[L.wi + e];  // w_i then b_i
}

template <int D>
LO_HD int64_t meta_lstm_weight_grad_count(int H) {
  return 1 + 4 * H * D + 4 * H * H + 8 * H + 2 * (H + 3);
}

}  // namespace lo
