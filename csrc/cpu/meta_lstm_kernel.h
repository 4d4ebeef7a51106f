// CPU kernels of meta_lstm_step and its backward: SIMD across coordinates (each coordinate's
// H-wide h and c rows transposed into lane-major vectors), OpenMP over fixed-size chunks, the math
// from common/meta_lstm_math.h. Torch-free; compiled once per capability (meta_lstm_<cap>.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>

#include "common/meta_lstm_math.h"
#include "cpu/outer_product.h"
#include "cpu/parallel.h"

namespace lo {
namespace cpu {

// Coordinates per chunk of the backward: the unit of one partial sum of the weight gradients, a
// function of n alone (so the sums do not depend on the thread count).
inline int64_t meta_lstm_backward_chunk(int64_t n) { return reduction_chunk(n, 192, 2048); }
// Fewest coordinates worth handing to a thread in the forward.
constexpr int64_t kMetaLSTMForwardGrain = 256;

template <typename S>
struct MetaLSTMForwardArgs {
  const S *theta, *grad, *h, *c, *f_prev, *i_prev;  // (n,), (n,), (n, H), (n, H), (n,), (n,)
  S *theta_new, *h_new, *c_new, *f, *i;
  int64_t n;
  int input_size;  // D: 4 or 1
  MetaLSTMParams<S> params;
};

template <typename S>
struct MetaLSTMBackwardArgs {
  const S *g_theta_new, *g_h_new, *g_c_new, *g_f, *g_i;  // gradients of the five outputs
  const S *theta, *grad, *h, *c, *f_prev, *i_prev;
  S *d_theta, *d_grad, *d_h, *d_c, *d_f_prev, *d_i_prev;
  // The weight and loss gradients, concatenated in schema order (meta_lstm_weight_grad).
  S* d_weights;
  // Scratch of num_chunks(n, meta_lstm_backward_chunk(n)) x packed-layout size doubles.
  double* partials;
  S loss;
  int64_t n;
  int input_size;
  MetaLSTMParams<S> params;
};

struct MetaLSTMKernels {
  void (*forward_f32)(const MetaLSTMForwardArgs<float>&);
  void (*forward_f64)(const MetaLSTMForwardArgs<double>&);
  void (*backward_f32)(const MetaLSTMBackwardArgs<float>&);
  void (*backward_f64)(const MetaLSTMBackwardArgs<double>&);
};

MetaLSTMKernels meta_lstm_kernels_baseline();
MetaLSTMKernels meta_lstm_kernels_avx2();
MetaLSTMKernels meta_lstm_kernels_avx512();

#ifdef LO_CAPABILITY
namespace LO_CAPABILITY {

// Lane l of a SIMD vector, or the scalar itself (W = 1). GCC vectors may alias their elements.
template <typename S, typename V>
inline S& lane(V& v, int l) {
  return reinterpret_cast<S*>(&v)[l];
}

// W coordinates starting at j (w of them valid, the rest zero) of an (n,) vector ...
template <typename S, typename V, int W>
inline V load_lanes(const S* x, int64_t j, int w) {
  V v = splat<V>(0);
  if (w == W) {
    std::memcpy(&v, x + j, sizeof(V));
  } else {
    for (int l = 0; l < w; ++l) lane<S>(v, l) = x[j + l];
  }
  return v;
}

template <typename S, typename V, int W>
inline void store_lanes(S* x, int64_t j, int w, V v) {
  if (w == W) {
    std::memcpy(x + j, &v, sizeof(V));
  } else {
    for (int l = 0; l < w; ++l) x[j + l] = lane<S>(v, l);
  }
}

// The in-register transposes below: lanes of a and b exchanged in blocks of `half` lanes (the
// off-diagonal blocks of the 2x2 block matrix [a; b] swap places).
template <int half, typename V, std::size_t... L>
inline void swap_blocks(V& a, V& b, std::index_sequence<L...>) {
  constexpr int W = sizeof...(L);
  const V lo = __builtin_shufflevector(a, b, ((L & half) == 0 ? L : W + L - half)...);
  const V hi = __builtin_shufflevector(a, b, ((L & half) == 0 ? L + half : W + L)...);
  a = lo;
  b = hi;
}

// Transposes the T x T blocks that lie along lanes [qT, qT + T) of v[0..T), for every q: the
// recursive block transpose, log2(T) rounds of lane-block swaps between vector pairs (Half is the
// round's block size). With T = W, the W x W transpose.
template <int T, int W, int Half = T / 2, typename V>
inline void transpose_blocks(V* v) {
  static_assert(T > 0 && (T & (T - 1)) == 0 && W % T == 0, "T: a power of two dividing W");
  if constexpr (Half > 0) {
    LO_UNROLL
    for (int base = 0; base < T; base += 2 * Half) {
      LO_UNROLL
      for (int i = base; i < base + Half; ++i) swap_blocks<Half>(v[i], v[i + Half], std::make_index_sequence<W>{});
    }
    transpose_blocks<T, W, Half / 2>(v);
  }
}

// A GCC vector of N values of S.
template <int N, typename S>
struct VecOf {
  typedef S type __attribute__((vector_size(N * sizeof(S))));
};

template <typename A, std::size_t... L>
inline auto shuffle(A a, A b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, L...);
}

template <std::size_t Offset, typename A, std::size_t... L>
inline auto slice(A a, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, a, (Offset + L)...);
}

// N values in blocks of T, block q at p + q * stride: concatenated from T-value vector loads.
// (Scalar stores into a buffer read back as one vector would stall on store forwarding.)
template <int T, int N, typename S>
inline typename VecOf<N, S>::type load_blocks(const S* p, int64_t stride) {
  if constexpr (N == T) {
    typename VecOf<N, S>::type r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  } else {
    const auto lo = load_blocks<T, N / 2>(p, stride);
    const auto hi = load_blocks<T, N / 2>(p + (N / 2 / T) * stride, stride);
    return shuffle(lo, hi, std::make_index_sequence<N>{});
  }
}

template <int T, int N, typename S>
inline void store_blocks(S* p, int64_t stride, typename VecOf<N, S>::type v) {
  if constexpr (N == T) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    store_blocks<T, N / 2>(p, stride, slice<0>(v, std::make_index_sequence<N / 2>{}));
    store_blocks<T, N / 2>(p + (N / 2 / T) * stride, stride, slice<N / 2>(v, std::make_index_sequence<N / 2>{}));
  }
}

// Whether W rows of HC values transpose in registers: whole W x W blocks plus a tail of T columns,
// T a power of two dividing W (20 = 16 + 4 = 2 x 8 + 4 = 5 x 4).
template <int HC, int W>
constexpr bool kRegisterTranspose =
    HC > 0 && W > 1 && W <= 16 && (HC % W == 0 || (W % (HC % W) == 0 && ((HC % W) & (HC % W - 1)) == 0));

// ... and of an (n, H) matrix, transposed so that out[m] holds column m of the W rows. The W rows
// are one contiguous block. In registers when kRegisterTranspose (full groups of the fixed hidden
// size): W x W blocks are loaded row by row and transposed; the T-column tail is loaded as W/T
// rows' T values per vector, which the last log2(T) rounds put in place. Otherwise through a
// lane-major buffer with plain loops.
template <int HC, typename S, typename V, int W>
inline void load_rows(const S* LO_RESTRICT x, int64_t j, int w, int H, V* out) {
  constexpr int kH = HiddenArray<HC>::size;
  const int h = HC > 0 ? HC : H;
  const S* row = x + j * h;
  if constexpr (kRegisterTranspose<HC, W>) {
    if (w == W) {
      constexpr int kFull = HC / W * W, T = HC - kFull;
      LO_UNROLL
      for (int m0 = 0; m0 < kFull; m0 += W) {
        V v[W];
        LO_UNROLL
        for (int l = 0; l < W; ++l) std::memcpy(&v[l], row + l * HC + m0, sizeof(V));
        transpose_blocks<W, W>(v);
        LO_UNROLL
        for (int m = 0; m < W; ++m) out[m0 + m] = v[m];
      }
      if constexpr (T > 0) {
        V v[T];  // vector i, block q: row qT + i's tail
        LO_UNROLL
        for (int i = 0; i < T; ++i) v[i] = load_blocks<T, W>(row + i * HC + kFull, T * HC);
        transpose_blocks<T, W>(v);
        LO_UNROLL
        for (int i = 0; i < T; ++i) out[kFull + i] = v[i];
      }
      return;
    }
  }
  alignas(64) S buf[kH * W];
  for (int m = 0; m < h; ++m) {
    for (int l = 0; l < W; ++l) buf[m * W + l] = l < w ? row[l * h + m] : S(0);
  }
  for (int m = 0; m < h; ++m) std::memcpy(&out[m], buf + m * W, sizeof(V));
}

template <int HC, typename S, typename V, int W>
inline void store_rows(S* LO_RESTRICT x, int64_t j, int w, int H, const V* in) {
  constexpr int kH = HiddenArray<HC>::size;
  const int h = HC > 0 ? HC : H;
  S* row = x + j * h;
  if constexpr (kRegisterTranspose<HC, W>) {
    if (w == W) {
      constexpr int kFull = HC / W * W, T = HC - kFull;
      LO_UNROLL
      for (int m0 = 0; m0 < kFull; m0 += W) {
        V v[W];
        LO_UNROLL
        for (int m = 0; m < W; ++m) v[m] = in[m0 + m];
        transpose_blocks<W, W>(v);
        LO_UNROLL
        for (int l = 0; l < W; ++l) std::memcpy(row + l * HC + m0, &v[l], sizeof(V));
      }
      if constexpr (T > 0) {
        V v[T];
        LO_UNROLL
        for (int i = 0; i < T; ++i) v[i] = in[kFull + i];
        transpose_blocks<T, W>(v);
        LO_UNROLL
        for (int i = 0; i < T; ++i) store_blocks<T, W, S>(row + i * HC + kFull, T * HC, v[i]);
      }
      return;
    }
  }
  alignas(64) S buf[kH * W];
  for (int m = 0; m < h; ++m) std::memcpy(buf + m * W, &in[m], sizeof(V));
  for (int l = 0; l < w; ++l) {
    for (int m = 0; m < h; ++m) row[l * h + m] = buf[m * W + l];
  }
}

// Asks for the (n, H) rows of the group kPrefetchGroups ahead of j: each group's rows are one
// contiguous block, and the time a group takes covers a memory round trip, so the next blocks
// arrive before the transposes need them.
constexpr int kPrefetchGroups = 2;

template <typename S>
inline void prefetch_rows(const S* x, int64_t j, int64_t end, int W, int H) {
  const int64_t ahead = j + kPrefetchGroups * W;
  if (ahead >= end) return;
  const char* p = reinterpret_cast<const char*>(x + ahead * H);
  const int64_t bytes = static_cast<int64_t>(W) * H * sizeof(S);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// Layer 1's 4H gate pre-activations (the same sums, in the same order, as meta_lstm_gate), as a
// mat-vec blocked over kRows rows: their independent accumulators hide the FMA latency, and each
// h[m] is loaded once per block, the weights being broadcast from memory into the FMAs.
template <int HC, int D, typename S, typename V>
inline void gate_preactivations(const MetaLSTMParams<S>& P, const V* xg, const V* h, V* out) {
  using In = MetaLSTMInput<D>;
  const int H = HC > 0 ? HC : P.hidden;
  constexpr int kRows = HC > 0 && HC % 2 == 0 ? 8 : 4;  // divides 4H
  for (int r0 = 0; r0 < 4 * H; r0 += kRows) {
    V acc[kRows];
    LO_UNROLL
    for (int q = 0; q < kRows; ++q) acc[q] = splat<V>(P.gate_bias[r0 + q]);
    LO_UNROLL
    for (int d = 0; d < In::grad_columns; ++d) {
      LO_UNROLL
      for (int q = 0; q < kRows; ++q) {
        acc[q] += splat<V>(P.w_ih[(r0 + q) * D + In::first_grad_column + d]) * xg[d];
      }
    }
    const S* w = P.w_hh + static_cast<int64_t>(r0) * H;
    LO_UNROLL
    for (int m = 0; m < H; ++m) {
      const V hm = h[m];
      LO_UNROLL
      for (int q = 0; q < kRows; ++q) acc[q] += splat<V>(w[q * H + m]) * hm;
    }
    LO_UNROLL
    for (int q = 0; q < kRows; ++q) out[r0 + q] = acc[q];
  }
}

// What the forward of one group of coordinates computes and its backward reuses.
template <int HC, int D, typename V>
struct MetaLSTMStep {
  static constexpr int kH = HiddenArray<HC>::size;
  V xg[MetaLSTMInput<D>::grad_columns];
  V gate[4 * kH];  // activations, rows i, f, g, o
  V c_new[kH], tanh_c[kH], h_new[kH];
  V f, i, sigmoid_f, sigmoid_i;
};

// meta_lstm_forward for one group, phase by phase over all units rather than unit by unit: each
// phase is many independent chains (the gates' sums, then their sigmoids and tanhs, then the
// cells), which the out-of-order core overlaps, where one unit at a time is one long dependent
// chain of mat-vec, activation and cell.
template <int HC, int D, typename S, typename V>
inline void step_forward(const MetaLSTMParams<S>& P, V theta, V grad, const V* h, const V* c,
                         V f_prev, V i_prev, MetaLSTMStep<HC, D, V>& st) {
  const int H = HC > 0 ? HC : P.hidden;
  meta_lstm_grad_input<D>(grad, P.pp, st.xg);
  gate_preactivations<HC, D>(P, st.xg, h, st.gate);
  LO_UNROLL
  for (int q = 0; q < 4; ++q) {
    V* g = st.gate + q * H;
    for (int k = 0; k < H; ++k) g[k] = meta_lstm_activate_gate(q, g[k]);
  }
  V f_sum = splat<V>(0), i_sum = splat<V>(0);
  for (int k = 0; k < H; ++k) {
    meta_lstm_cell(st.gate[k], st.gate[H + k], st.gate[2 * H + k], st.gate[3 * H + k], c[k],
                   st.c_new[k], st.tanh_c[k], st.h_new[k]);
    f_sum += splat<V>(P.w_f[k]) * st.h_new[k];
    i_sum += splat<V>(P.w_i[k]) * st.h_new[k];
  }
  meta_lstm_layer2(P, H, f_sum, i_sum, theta, f_prev, i_prev, st.f, st.i);
  st.sigmoid_f = sigmoid(st.f);
  st.sigmoid_i = sigmoid(st.i);
}

template <int HC, int D, typename S, typename V, int W>
void forward(const MetaLSTMForwardArgs<S>& a) {
  constexpr int kH = HiddenArray<HC>::size;
  const int H = a.params.hidden;
  for_each_range(a.n, kMetaLSTMForwardGrain, [&](int64_t begin, int64_t end) {
    V h[kH], c[kH];
    MetaLSTMStep<HC, D, V> st;
    for (int64_t j = begin; j < end; j += W) {
      const int w = end - j < W ? static_cast<int>(end - j) : W;
      prefetch_rows(a.h, j, end, W, H);
      prefetch_rows(a.c, j, end, W, H);
      load_rows<HC, S, V, W>(a.h, j, w, H, h);
      load_rows<HC, S, V, W>(a.c, j, w, H, c);
      const V theta = load_lanes<S, V, W>(a.theta, j, w), grad = load_lanes<S, V, W>(a.grad, j, w);
      step_forward<HC, D>(a.params, theta, grad, h, c, load_lanes<S, V, W>(a.f_prev, j, w),
                          load_lanes<S, V, W>(a.i_prev, j, w), st);
      store_lanes<S, V, W>(a.theta_new, j, w, meta_lstm_update(st.sigmoid_f, st.sigmoid_i, theta, grad));
      store_lanes<S, V, W>(a.f, j, w, st.f);
      store_lanes<S, V, W>(a.i, j, w, st.i);
      store_rows<HC, S, V, W>(a.h_new, j, w, H, st.h_new);
      store_rows<HC, S, V, W>(a.c_new, j, w, H, st.c_new);
    }
  });
}

// The weight gradients are sums over coordinates of factor x input products (the packed layout
// of meta_lstm_math.h). Each group's factors and inputs are staged for kStage groups, then added
// to the chunk's accumulators as small outer-product GEMMs (cpu/outer_product.h).
constexpr int kStage = 8;

template <typename V>
struct WeightStage {
  V* factors;  // [factor][slot]: d_gate (4H), d_f, d_i
  V* inputs;   // [input][slot]: h (H), xg (G), h_new (H), theta, f_prev, i_prev, 1
};

// The rows x cols rectangle of factors f0.. times inputs x0.. into out (row stride `stride`).
template <typename V>
inline void outer_rect(V* out, int64_t stride, const WeightStage<V>& st, int f0, int rows, int x0,
                       int cols, int ns) {
  outer_rect<kStage>(out, stride, st.factors + static_cast<int64_t>(f0) * kStage, rows,
                     st.inputs + static_cast<int64_t>(x0) * kStage, cols, ns);
}

// Adds the ns staged groups' products to the chunk's accumulators (packed layout).
template <int D, typename V>
inline void flush_weight_terms(V* acc, const MetaLSTMPackedLayout& L, int H, const WeightStage<V>& st, int ns) {
  constexpr int G = MetaLSTMInput<D>::grad_columns;
  const int R = 4 * H, x_h = 0, x_xg = H, x_h_new = H + G, x_theta = 2 * H + G, x_one = x_theta + 3;
  outer_rect(acc + L.hh, H, st, 0, R, x_h, H, ns);
  outer_rect(acc + L.x, G, st, 0, R, x_xg, G, ns);
  outer_rect(acc + L.bias, 1, st, 0, R, x_one, 1, ns);
  for (int layer2 = 0; layer2 < 2; ++layer2) {  // d_f · [h_new, theta, f_prev, 1], d_i · [..., i_prev, 1]
    V* out = acc + (layer2 == 0 ? L.wf : L.wi);
    const int f = R + layer2;
    outer_rect(out, 1, st, f, 1, x_h_new, H + 1, ns);  // h_new, theta
    outer_rect(out + H + 1, 1, st, f, 1, x_theta + 1 + layer2, 1, ns);
    outer_rect(out + H + 2, 1, st, f, 1, x_one, 1, ns);
  }
}

template <int HC, int D, typename S, typename V, int W>
void backward(const MetaLSTMBackwardArgs<S>& a) {
  const int H = a.params.hidden;
  const MetaLSTMParams<S>& P = a.params;
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  const int n_factors = meta_lstm_factor_count(H), n_inputs = meta_lstm_input_count<D>(H);
  const int64_t chunk_size = meta_lstm_backward_chunk(a.n);
  for_each_chunk(a.n, chunk_size, [&](int64_t begin, int64_t end, int64_t chunk) {
    constexpr int kH = HiddenArray<HC>::size;
    constexpr int G = MetaLSTMInput<D>::grad_columns;
    // Float lanes sum at most 2048 / W terms each; the lanes and the chunks are then
    // added in double, in a fixed order.
    std::unique_ptr<V[]> buffer(new V[L.size + static_cast<int64_t>(n_factors + n_inputs) * kStage]);
    V* acc = buffer.get();
    for (int64_t p = 0; p < L.size; ++p) acc[p] = splat<V>(0);
    const WeightStage<V> stage{acc + L.size, acc + L.size + n_factors * kStage};
    int ns = 0;
    V h[kH], c[kH], g_h_new[kH], g_c_new[kH], d_h[kH], d_c[kH];
    MetaLSTMStep<HC, D, V> st;
    for (int64_t j = begin; j < end; j += W) {
      const int w = end - j < W ? static_cast<int>(end - j) : W;
      prefetch_rows(a.h, j, end, W, H);
      prefetch_rows(a.c, j, end, W, H);
      prefetch_rows(a.g_h_new, j, end, W, H);
      prefetch_rows(a.g_c_new, j, end, W, H);
      load_rows<HC, S, V, W>(a.h, j, w, H, h);
      load_rows<HC, S, V, W>(a.c, j, w, H, c);
      load_rows<HC, S, V, W>(a.g_h_new, j, w, H, g_h_new);
      load_rows<HC, S, V, W>(a.g_c_new, j, w, H, g_c_new);
      const V theta = load_lanes<S, V, W>(a.theta, j, w), grad = load_lanes<S, V, W>(a.grad, j, w);
      const V f_prev = load_lanes<S, V, W>(a.f_prev, j, w);
      const V i_prev = load_lanes<S, V, W>(a.i_prev, j, w);
      step_forward<HC, D>(P, theta, grad, h, c, f_prev, i_prev, st);

      V d_f, d_i, d_theta, d_f_prev, d_i_prev;
      meta_lstm_layer2_backward(P, H, theta, grad, st.sigmoid_f, st.sigmoid_i,
                                load_lanes<S, V, W>(a.g_theta_new, j, w),
                                load_lanes<S, V, W>(a.g_f, j, w), load_lanes<S, V, W>(a.g_i, j, w),
                                d_f, d_i, d_theta, d_f_prev, d_i_prev);
      // The factors go straight into the stage: d_gate[r] at factors[r][ns].
      V* F = stage.factors + ns;
      for (int k = 0; k < H; ++k) {
        const V d_h_new = g_h_new[k] + d_f * splat<V>(P.w_f[k]) + d_i * splat<V>(P.w_i[k]);
        meta_lstm_cell_backward(d_h_new, g_c_new[k], st.gate[k], st.gate[H + k], st.gate[2 * H + k],
                                st.gate[3 * H + k], c[k], st.tanh_c[k], d_c[k], F[k * kStage],
                                F[(H + k) * kStage], F[(2 * H + k) * kStage], F[(3 * H + k) * kStage]);
      }
      F[4 * H * kStage] = d_f;
      F[(4 * H + 1) * kStage] = d_i;
      V d_gate[4 * kH];
      for (int r = 0; r < 4 * H; ++r) d_gate[r] = F[r * kStage];
      V d_xg[G];
      meta_lstm_gates_backward<HC, D>(P, d_gate, d_h, d_xg);
      const V d_grad = meta_lstm_grad_backward<D>(P.pp, grad, load_lanes<S, V, W>(a.g_theta_new, j, w),
                                                  st.sigmoid_i, d_xg);
      V* X = stage.inputs + ns;
      for (int m = 0; m < H; ++m) X[m * kStage] = h[m];
      for (int d = 0; d < G; ++d) X[(H + d) * kStage] = st.xg[d];
      for (int k = 0; k < H; ++k) X[(H + G + k) * kStage] = st.h_new[k];
      X[(2 * H + G) * kStage] = theta;
      X[(2 * H + G + 1) * kStage] = f_prev;
      X[(2 * H + G + 2) * kStage] = i_prev;
      X[(2 * H + G + 3) * kStage] = splat<V>(1);
      if (w < W) {  // padding lanes stay out of the sums (their terms may be 0 · Inf = NaN)
        zero_padding_lanes(F, n_factors, kStage, w);
        zero_padding_lanes(X, n_inputs, kStage, w);
      }
      if (++ns == kStage) {
        flush_weight_terms<D>(acc, L, H, stage, ns);
        ns = 0;
      }
      store_lanes<S, V, W>(a.d_theta, j, w, d_theta);
      store_lanes<S, V, W>(a.d_grad, j, w, d_grad);
      store_lanes<S, V, W>(a.d_f_prev, j, w, d_f_prev);
      store_lanes<S, V, W>(a.d_i_prev, j, w, d_i_prev);
      store_rows<HC, S, V, W>(a.d_h, j, w, H, d_h);
      store_rows<HC, S, V, W>(a.d_c, j, w, H, d_c);
    }
    if (ns > 0) flush_weight_terms<D>(acc, L, H, stage, ns);
    double* out = a.partials + chunk * L.size;
    for (int64_t p = 0; p < L.size; ++p) {
      double s = 0;
      for (int l = 0; l < W; ++l) s += static_cast<double>(lane<S>(acc[p], l));
      out[p] = s;
    }
  });

  const int64_t chunks = num_chunks(a.n, chunk_size);
  std::unique_ptr<double[]> sums(new double[L.size]());
  for (int64_t k = 0; k < chunks; ++k) {
    const double* part = a.partials + k * L.size;
    for (int64_t p = 0; p < L.size; ++p) sums[p] += part[p];
  }
  const int64_t count = meta_lstm_weight_grad_count<D>(H);
  for (int64_t e = 0; e < count; ++e) {
    a.d_weights[e] = static_cast<S>(
        meta_lstm_weight_grad<D, double>(e, H, sums.get(), a.params.w_ih, a.loss, a.params.pp));
  }
}

template <typename S, typename V, int W>
void forward_dispatch(const MetaLSTMForwardArgs<S>& a) {
  const bool ravi = a.input_size == 4;
  if (a.params.hidden == 20) {
    ravi ? forward<20, 4, S, V, W>(a) : forward<20, 1, S, V, W>(a);
  } else {
    ravi ? forward<0, 4, S, V, W>(a) : forward<0, 1, S, V, W>(a);
  }
}

template <typename S, typename V, int W>
void backward_dispatch(const MetaLSTMBackwardArgs<S>& a) {
  const bool ravi = a.input_size == 4;
  if (a.params.hidden == 20) {
    ravi ? backward<20, 4, S, V, W>(a) : backward<20, 1, S, V, W>(a);
  } else {
    ravi ? backward<0, 4, S, V, W>(a) : backward<0, 1, S, V, W>(a);
  }
}

}  // namespace LO_CAPABILITY

// float runs W lanes per instruction; double stays scalar (it serves gradcheck and tests).
MetaLSTMKernels LO_KERNEL(meta_lstm_kernels)() {
  constexpr int W = sizeof(LO_VEC) / sizeof(float);
  return {&LO_CAPABILITY::forward_dispatch<float, LO_VEC, W>,
          &LO_CAPABILITY::forward_dispatch<double, double, 1>,
          &LO_CAPABILITY::backward_dispatch<float, LO_VEC, W>,
          &LO_CAPABILITY::backward_dispatch<double, double, 1>};
}
#endif  // LO_CAPABILITY

}  // namespace cpu
}  // namespace lo
