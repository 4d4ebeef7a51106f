// What one operand load per FMA costs on this core (AVX2, one thread): the loop shape of the
// kernels' dense layers and mat-vecs — 10 independent accumulator chains, each FMA taking one
// weight — with the weight (a) in a register, (b) broadcast from memory (vbroadcastss + FMA, the
// AVX2 kernels' form: AVX2 has no embedded broadcast) and (c) as a full-width memory operand of the
// FMA (what pre-broadcast weights would give). Prints GFLOP/s, the median of 7 runs each, and each
// as a fraction of (a).
//
//   g++ -O3 -mavx2 -mfma -std=c++17 bench/instruction_mix/fma_operands.cpp -o /tmp/fma_operands
//   /tmp/fma_operands
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

typedef float v8 __attribute__((vector_size(32)));
constexpr int kChains = 10;  // the AVX2 kernels' register block (kRegisterBlock)
alignas(64) float weights[4096];
alignas(64) v8 splatted[512];

enum Operand { kRegister, kBroadcast, kFullWidth };

template <Operand kind>
__attribute__((noinline)) float run(long iterations, v8 x) {
  v8 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = x + static_cast<float>(c);
  for (long i = 0; i < iterations; ++i) {
    const float* w = weights + (i & 255) * 16;
    const v8* q = splatted + (i & 31) * 16;
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) {
      // A vector built from copies is one vbroadcastss; `v8{} + w[c]` would cost an add.
      if (kind == kBroadcast) acc[c] = acc[c] * v8{w[c], w[c], w[c], w[c], w[c], w[c], w[c], w[c]} + x;
      if (kind == kFullWidth) acc[c] = acc[c] * q[c] + x;
      if (kind == kRegister) acc[c] = acc[c] * x + x;
    }
  }
  v8 total = acc[0];
  for (int c = 1; c < kChains; ++c) total += acc[c];
  float sum = 0;
  for (int l = 0; l < 8; ++l) sum += total[l];
  return sum;
}

template <Operand kind>
double gflops() {
  const v8 x = v8{} + 0.5f;
  const long iterations = 20000000;
  run<kind>(1000, x);
  std::vector<double> rates;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float sink = run<kind>(iterations, x);
    (void)sink;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(2.0 * 8 * kChains * iterations / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

int main() {
  for (float& w : weights) w = 0.999f;
  for (v8& q : splatted) q = v8{} + 0.999f;
  const double reg = gflops<kRegister>(), bcast = gflops<kBroadcast>(), full = gflops<kFullWidth>();
  std::printf("weight in a register:            %6.1f GFLOP/s\n", reg);
  std::printf("weight broadcast from memory:    %6.1f GFLOP/s (%.0f %% of the register loop)\n", bcast, 100 * bcast / reg);
  std::printf("weight as a full-width operand:  %6.1f GFLOP/s (%.0f %% of the register loop)\n", full, 100 * full / reg);
}
