// CPU kernels of meta_lstm_step and its backward: SIMD across coordinates (each coordinate's
// H-wide h and c rows transposed into lane-major vectors), OpenMP over fixed-size chunks, the math
// from common/meta_lstm_math.h. Torch-free; compiled once per capability (meta_lstm_<cap>.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>

#include "common/meta_lstm_math.h"
#include "cpu/parallel.h"

namespace lo {
namespace cpu {

// Coordinates per chunk: the unit of work of one thread and of one partial sum of the weight
// gradients (so the sums do not depend on the thread count).
constexpr int64_t kMetaLSTMChunk = 2048;

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
  // Scratch of num_chunks(n, kMetaLSTMChunk) x packed-layout size doubles.
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

// ... and of an (n, H) matrix, transposed so that out[m] holds column m of the W rows. The
// transposition goes through a lane-major buffer with plain loops of fixed trip counts, which the
// compiler turns into gathers/shuffles; element-wise lane inserts into a vector register do not.
template <int HC, typename S, typename V, int W>
inline void load_rows(const S* LO_RESTRICT x, int64_t j, int w, int H, V* out) {
  constexpr int kH = HiddenArray<HC>::size;
  const int h = HC > 0 ? HC : H;
  const S* row = x + j * h;
  alignas(64) S buf[kH * W];
  if (w == W && HC > 0) {
    for (int m = 0; m < kH; ++m) {
      for (int l = 0; l < W; ++l) buf[m * W + l] = row[l * kH + m];
    }
  } else {
    for (int m = 0; m < h; ++m) {
      for (int l = 0; l < W; ++l) buf[m * W + l] = l < w ? row[l * h + m] : S(0);
    }
  }
  for (int m = 0; m < h; ++m) std::memcpy(&out[m], buf + m * W, sizeof(V));
}

template <int HC, typename S, typename V, int W>
inline void store_rows(S* LO_RESTRICT x, int64_t j, int w, int H, const V* in) {
  constexpr int kH = HiddenArray<HC>::size;
  const int h = HC > 0 ? HC : H;
  S* row = x + j * h;
  alignas(64) S buf[kH * W];
  for (int m = 0; m < h; ++m) std::memcpy(buf + m * W, &in[m], sizeof(V));
  if (w == W && HC > 0) {
    for (int l = 0; l < W; ++l) {
      for (int m = 0; m < kH; ++m) row[l * kH + m] = buf[m * W + l];
    }
  } else {
    for (int l = 0; l < w; ++l) {
      for (int m = 0; m < h; ++m) row[l * h + m] = buf[m * W + l];
    }
  }
}

template <int HC, int D, typename S, typename V, int W>
void forward(const MetaLSTMForwardArgs<S>& a) {
  constexpr int kH = HiddenArray<HC>::size;
  const int H = a.params.hidden;
  for_each_chunk(a.n, kMetaLSTMChunk, [&](int64_t begin, int64_t end, int64_t) {
    V h[kH], c[kH], h_new[kH], c_new[kH];
    for (int64_t j = begin; j < end; j += W) {
      const int w = end - j < W ? static_cast<int>(end - j) : W;
      load_rows<HC, S, V, W>(a.h, j, w, H, h);
      load_rows<HC, S, V, W>(a.c, j, w, H, c);
      V theta_new, f, i;
      meta_lstm_forward<HC, D>(a.params, load_lanes<S, V, W>(a.theta, j, w),
                               load_lanes<S, V, W>(a.grad, j, w), h, c,
                               load_lanes<S, V, W>(a.f_prev, j, w),
                               load_lanes<S, V, W>(a.i_prev, j, w), theta_new, h_new, c_new, f, i);
      store_lanes<S, V, W>(a.theta_new, j, w, theta_new);
      store_lanes<S, V, W>(a.f, j, w, f);
      store_lanes<S, V, W>(a.i, j, w, i);
      store_rows<HC, S, V, W>(a.h_new, j, w, H, h_new);
      store_rows<HC, S, V, W>(a.c_new, j, w, H, c_new);
    }
  });
}

// Adds one group's products to the chunk's accumulators (packed layout).
template <int HC, int D, typename V>
inline void accumulate_weight_terms(V* LO_RESTRICT acc, const MetaLSTMPackedLayout& L, int H,
                                    const MetaLSTMWeightTerms<HC, D, V>& t, const V* h, V theta,
                                    V f_prev, V i_prev) {
  constexpr int G = MetaLSTMInput<D>::grad_columns;
  const int hs = HC > 0 ? HC : H;
  for (int r = 0; r < 4 * hs; ++r) {
    const V dr = t.d_gate[r];
    V* row = acc + L.hh + static_cast<int64_t>(r) * hs;
    LO_UNROLL
    for (int m = 0; m < hs; ++m) row[m] += dr * h[m];
    LO_UNROLL
    for (int d = 0; d < G; ++d) acc[L.x + r * G + d] += dr * t.xg[d];
    acc[L.bias + r] += dr;
  }
  LO_UNROLL
  for (int k = 0; k < hs; ++k) {
    acc[L.wf + k] += t.d_f * t.h_new[k];
    acc[L.wi + k] += t.d_i * t.h_new[k];
  }
  acc[L.wf + hs] += t.d_f * theta;
  acc[L.wf + hs + 1] += t.d_f * f_prev;
  acc[L.wf + hs + 2] += t.d_f;
  acc[L.wi + hs] += t.d_i * theta;
  acc[L.wi + hs + 1] += t.d_i * i_prev;
  acc[L.wi + hs + 2] += t.d_i;
}

template <int HC, int D, typename S, typename V, int W>
void backward(const MetaLSTMBackwardArgs<S>& a) {
  constexpr int kH = HiddenArray<HC>::size;
  const int H = a.params.hidden;
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  for_each_chunk(a.n, kMetaLSTMChunk, [&](int64_t begin, int64_t end, int64_t chunk) {
    // Float lanes sum at most kMetaLSTMChunk / W terms each; the lanes and the chunks are then
    // added in double, in a fixed order.
    std::unique_ptr<V[]> acc(new V[L.size]);
    for (int64_t p = 0; p < L.size; ++p) acc[p] = splat<V>(0);
    V h[kH], c[kH], g_h_new[kH], g_c_new[kH], d_h[kH], d_c[kH];
    MetaLSTMWeightTerms<HC, D, V> terms;
    for (int64_t j = begin; j < end; j += W) {
      const int w = end - j < W ? static_cast<int>(end - j) : W;
      load_rows<HC, S, V, W>(a.h, j, w, H, h);
      load_rows<HC, S, V, W>(a.c, j, w, H, c);
      load_rows<HC, S, V, W>(a.g_h_new, j, w, H, g_h_new);
      load_rows<HC, S, V, W>(a.g_c_new, j, w, H, g_c_new);
      const V theta = load_lanes<S, V, W>(a.theta, j, w);
      const V f_prev = load_lanes<S, V, W>(a.f_prev, j, w);
      const V i_prev = load_lanes<S, V, W>(a.i_prev, j, w);
      V d_theta, d_grad, d_f_prev, d_i_prev;
      meta_lstm_backward<HC, D>(a.params, theta, load_lanes<S, V, W>(a.grad, j, w), h, c, f_prev,
                                i_prev, load_lanes<S, V, W>(a.g_theta_new, j, w), g_h_new, g_c_new,
                                load_lanes<S, V, W>(a.g_f, j, w), load_lanes<S, V, W>(a.g_i, j, w),
                                d_theta, d_grad, d_h, d_c, d_f_prev, d_i_prev, terms);
      if (w < W) {
        // Padding lanes saw zero inputs, so their terms are finite; zeroing the factors keeps
        // them out of the sums.
        for (int l = w; l < W; ++l) {
          for (int r = 0; r < 4 * H; ++r) lane<S>(terms.d_gate[r], l) = 0;
          lane<S>(terms.d_f, l) = 0;
          lane<S>(terms.d_i, l) = 0;
        }
      }
      accumulate_weight_terms<HC, D>(acc.get(), L, H, terms, h, theta, f_prev, i_prev);
      store_lanes<S, V, W>(a.d_theta, j, w, d_theta);
      store_lanes<S, V, W>(a.d_grad, j, w, d_grad);
      store_lanes<S, V, W>(a.d_f_prev, j, w, d_f_prev);
      store_lanes<S, V, W>(a.d_i_prev, j, w, d_i_prev);
      store_rows<HC, S, V, W>(a.d_h, j, w, H, d_h);
      store_rows<HC, S, V, W>(a.d_c, j, w, H, d_c);
    }
    double* out = a.partials + chunk * L.size;
    for (int64_t p = 0; p < L.size; ++p) {
      double s = 0;
      for (int l = 0; l < W; ++l) s += static_cast<double>(lane<S>(acc[p], l));
      out[p] = s;
    }
  });

  const int64_t chunks = num_chunks(a.n, kMetaLSTMChunk);
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
