// Weight gradients as small GEMMs, shared by the CPU backward kernels. A weight's gradient is a sum
// over coordinates of (factor x input) products. The kernels stage the factors F and the inputs X
// of up to kSlots vectors of coordinates ("slots"), slot-minor: F[r * kSlots + s], X[k * kSlots + s].
// outer_rect then adds sum over s of F[r][s] X[k][s] to out[r * stride + k] in R x K register
// tiles, so each accumulator is loaded and stored once per kSlots vectors instead of once per
// vector. Torch-free; included inside a capability's namespace (see cpu/capability_variant.h) so
// that each instruction set gets its own copy.
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/scalar_math.h"

#ifdef LO_CAPABILITY
namespace lo {
namespace cpu {
namespace LO_CAPABILITY {

// out[r * stride + k] += sum over s < ns of F[r * kSlots + s] X[k * kSlots + s], for an R x K tile.
// Each sum starts from 0 and adds one product per slot, so that every step is a single FMA: started
// from the first product instead, `F0 X0 + F1 X1` has two products, and which one GCC fuses into
// the FMA (-ffp-contract=fast) follows the surrounding code, so the tile shape used to change the
// last bits of the sums (bench/README.md, "What bounds each op").
template <int kSlots, int R, int K, typename V>
inline void outer_tile(V* LO_RESTRICT out, int64_t stride, const V* LO_RESTRICT F,
                       const V* LO_RESTRICT X, int ns) {
  V acc[R][K];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[r][k] = splat<V>(0);
  }
  for (int s = 0; s < ns; ++s) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V f = F[r * kSlots + s];
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[r][k] += f * X[k * kSlots + s];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) out[r * stride + k] += acc[r][k];
  }
}

// Lanes [valid, W) of the staged vectors rows[0], rows[stride], ..., rows[(count - 1) * stride]
// set to 0: the padding lanes of a tail vector (coordinates past the end). A padding lane's
// factor and its input must both be 0 for its product to be 0: with an Inf meta-weight, the
// zero-filled coordinate's own terms are Inf or NaN (0 · Inf), and so would be 0 times them.
template <typename V>
inline void zero_padding_lanes(V* rows, int count, int stride, int valid) {
  if constexpr (ScalarOf<V>::lanes > 1) {
    using S = typename ScalarOf<V>::type;
    for (int r = 0; r < count; ++r) {
      S* lanes = reinterpret_cast<S*>(rows + static_cast<int64_t>(r) * stride);
      for (int l = valid; l < ScalarOf<V>::lanes; ++l) lanes[l] = S(0);
    }
  }
}

// The register tile of outer_rect: R x K accumulators, beside one factor and the K inputs. 4 x 5 on
// AVX-512's 32 registers; 3 x 4 on the 16 of SSE and AVX2, where the 20 accumulators of 4 x 5
// spilled to the stack (bench/instruction_mix/README.md): 3 x 4 made the LSTM backward's weight
// products 1.3x faster on an AVX2-only host (bench.lstm_phases, weight_terms). The shape never
// changes a result (see outer_tile).
template <typename V>
struct OuterTile {
  static constexpr bool kWide = sizeof(V) >= 64;
  static constexpr int kRows = kWide ? 4 : 3, kCols = kWide ? 5 : 4;
};

// The rows x cols rectangle: out[r * stride + k] += sum over s < ns of F[r][s] X[k][s], with ns >= 1.
template <int kSlots, typename V>
inline void outer_rect(V* out, int64_t stride, const V* F, int rows, const V* X, int cols, int ns) {
  constexpr int kBlockRows = OuterTile<V>::kRows, kBlockCols = OuterTile<V>::kCols;
  int r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) {
    int k = 0;
    for (; k + kBlockCols <= cols; k += kBlockCols)
      outer_tile<kSlots, kBlockRows, kBlockCols>(out + r * stride + k, stride, F + r * kSlots,
                                                 X + k * kSlots, ns);
    for (; k < cols; ++k)
      outer_tile<kSlots, kBlockRows, 1>(out + r * stride + k, stride, F + r * kSlots,
                                        X + k * kSlots, ns);
  }
  for (; r < rows; ++r) {
    int k = 0;
    for (; k + kBlockCols <= cols; k += kBlockCols)
      outer_tile<kSlots, 1, kBlockCols>(out + r * stride + k, stride, F + r * kSlots,
                                        X + k * kSlots, ns);
    for (; k < cols; ++k)
      outer_tile<kSlots, 1, 1>(out + r * stride + k, stride, F + r * kSlots, X + k * kSlots, ns);
  }
}

}  // namespace LO_CAPABILITY
}  // namespace cpu
}  // namespace lo
#endif  // LO_CAPABILITY
