// Per-phase timing of the TURTLE CPU kernels (the paper's [g, m, t] -> 5 x 20 -> 1 MLP, t = 1,
// float), for issue 15 items 0 and 1: how much of the kernel is its MLP, and how fast one hidden
// 20 x 20 layer runs on its own. Compiled by bench/kernel_phases.py per instruction set with the
// extension's flags, from csrc/cpu/turtle_kernel.h itself (turtle_mlp, turtle_dense, outer_rect).
//
// "whole" is the kernel on one thread. The phases run alone over the groups of n coordinates, on a
// small ring of L1-resident group buffers with a compiler barrier per group: "io" (the loads, clamp,
// momentum, update and stores over the real arrays), "mlp" (the MLP of one group), "dense_hidden"
// (one 20 x 20 layer with ReLU) and, in the backward, "weight_terms" (the weight-gradient outer
// products, flushed every kTurtleGradSlots groups as the kernel does). io and mlp chained on every
// group must give the kernel's outputs bit for bit (phases_match_kernel).
#include "cpu/capability_variant.h"
#include "cpu/turtle_kernel.h"


#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "harness.h"

namespace lo {
namespace cpu {
namespace LO_CAPABILITY {

using namespace phases;
using V = LO_VEC;
constexpr int W = sizeof(V) / sizeof(float);
constexpr int kH = kTurtlePaperWidth;
constexpr int kLayers = 6;  // 3 -> 20 x 5 -> 1
constexpr int kRing = 2;

struct Problem {
  int64_t n;
  std::vector<float> theta, grad, m, alpha, d_theta_new, d_m_new;
  std::vector<std::vector<float>> weight, bias;
  TurtleNet net{};
  TurtleWeights<float> table{};
  TurtleStep<float> st = TurtleStep<float>::make(0.9, INFINITY, false, false);

  explicit Problem(int64_t n_) : n(n_) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](std::vector<float>& v, int64_t size, float scale) {
      v.resize(size);
      for (auto& x : v) x = scale * normal(rng);
    };
    fill(theta, n, 1.0f), fill(grad, n, 1.0f), fill(m, n, 1.0f), fill(alpha, n, 1.0f);
    fill(d_theta_new, n, 1.0f), fill(d_m_new, n, 1.0f);
    const int sizes[kLayers + 1] = {3, kH, kH, kH, kH, kH, 1};
    weight.resize(kLayers), bias.resize(kLayers);
    net.layers = kLayers;
    net.width[0] = 2;  // the t column folds into b_0
    int64_t offset = 0;
    for (int k = 0; k < kLayers; ++k) {
      fill(weight[k], sizes[k + 1] * sizes[k], 0.3f), fill(bias[k], sizes[k + 1], 0.1f);
      net.width[k + 1] = sizes[k + 1];
      net.offset[k] = offset;
      offset += net.block_size(k);
      table.weight[k] = weight[k].data(), table.bias[k] = bias[k].data();
      table.row_stride[k] = sizes[k], table.col_stride[k] = 1, table.bias_stride[k] = 1;
    }
    net.num_params = offset;
    table.t_column = true;
    table.t = 1.0f;
  }
};

// One group's values as the phases pass them on.
struct Group {
  V theta, grad, m, alpha, g, m_new, u, theta_new;
  V a[kH], z[kH];
};

int run(int64_t n, double budget_s) {
  Record rec = start_record("turtle", n, budget_s);
  const Problem pr(n);
  const int64_t groups = n / W;

  std::vector<float> theta_new(n), m_new(n);
  const TurtleForwardArgs<float> fa{pr.theta.data(), pr.grad.data(), pr.m.data(), pr.alpha.data(),
                                    pr.table, theta_new.data(), m_new.data(), n};
  rec.forward_seconds = median_seconds([&] { turtle_forward_impl<kH, float, V, W>(fa, pr.net, pr.st); }, budget_s);

  std::vector<float> d_theta(n), d_grad(n), d_m(n), d_alpha(n);
  std::vector<std::vector<float>> d_weight(kLayers), d_bias(kLayers);
  TurtleWeightGrads<float> grads{};
  for (int k = 0; k < kLayers; ++k) {
    d_weight[k].resize(pr.weight[k].size()), d_bias[k].resize(pr.bias[k].size());
    grads.weight[k] = d_weight[k].data(), grads.bias[k] = d_bias[k].data();
  }
  const TurtleBackwardArgs<float> ba{pr.d_theta_new.data(), pr.d_m_new.data(), pr.grad.data(), pr.m.data(),
                                     pr.alpha.data(), pr.table, d_theta.data(), d_grad.data(), d_m.data(),
                                     d_alpha.data(), grads, n};
  rec.backward_seconds =
      median_seconds([&] { turtle_backward_impl<kH, float, V, W>(ba, pr.net, pr.st); }, budget_s);

  const std::unique_ptr<float[]> packed = packed_params(pr.table, pr.net);
  const float* params = packed.get();
  const TurtleNet& net = pr.net;
  auto io_in = [&](int64_t j, Group& g) {
    g.theta = load_lanes<V, float, W>(pr.theta.data(), j, n), g.grad = load_lanes<V, float, W>(pr.grad.data(), j, n);
    g.m = load_lanes<V, float, W>(pr.m.data(), j, n), g.alpha = load_lanes<V, float, W>(pr.alpha.data(), j, n);
    g.g = turtle_clamp(g.grad, pr.st);
    g.m_new = turtle_momentum(g.g, g.m, pr.st);
  };
  auto io_out = [&](int64_t j, Group& g) {
    g.theta_new = g.theta + g.alpha * g.u;
    store_lanes<V, float, W>(theta_new.data(), j, n, g.theta_new);
    store_lanes<V, float, W>(m_new.data(), j, n, g.m_new);
  };
  auto mlp = [&](Group& g) { g.u = turtle_mlp<kH>(g.g, g.m_new, params, net); };

  std::vector<Group> ring(kRing);
  for (int r = 0; r < kRing; ++r) {
    io_in(r * W, ring[r]);
    mlp(ring[r]);
    for (int o = 0; o < kH; ++o) ring[r].a[o] = splat<V>(0.1f * (o + 1));
  }
  rec.time("io", "forward", [&] {
    for (int64_t j = 0; j < n; j += W) {
      Group& g = ring[(j / W) % kRing];
      io_in(j, g);
      io_out(j, g);
      barrier();
    }
  }, budget_s);
  rec.time("mlp", "forward", over_groups(ring, groups, [&](Group& g) { mlp(g); }), budget_s);
  const float* hidden = params + net.offset[1];  // layer 1: the first 20 x 20 layer
  // On local arrays, as turtle_mlp holds them: through the group's members GCC cannot tell a from
  // z apart and stores every accumulator after each FMA.
  rec.time("dense_hidden", "forward", over_groups(ring, groups, [&](Group& g) {
    V a[kH], z[kH];
    for (int i = 0; i < kH; ++i) a[i] = g.a[i];
    turtle_dense<kH, kH, true>(hidden, hidden + kH * kH, a, z, kH, kH);
    for (int o = 0; o < kH; ++o) g.z[o] = z[o];
  }), budget_s);

  // The backward's weight-gradient products, as turtle_backward_impl stages and flushes them.
  const int widest = kH;
  const int64_t layer_block = static_cast<int64_t>(kTurtleGradSlots) * widest;
  std::vector<V> stage(2 * kLayers * layer_block);
  for (size_t i = 0; i < stage.size(); ++i) stage[i] = splat<V>(0.01f * static_cast<float>(i % 97));
  const V* dz_block = stage.data();
  const V* in_block = stage.data() + kLayers * layer_block;
  std::vector<V> acc(net.num_params, splat<V>(0));
  V ones[kTurtleGradSlots];
  for (V& one : ones) one = splat<V>(1);
  rec.time("weight_terms", "backward", [&] {
    for (int64_t j = 0; j + kTurtleGradSlots <= groups; j += kTurtleGradSlots) {
      turtle_flush_weight_terms(acc.data(), net, dz_block, in_block, layer_block, ones, kTurtleGradSlots);
      barrier();
    }
  }, budget_s);

  // io and mlp chained on every group reproduce the kernel's outputs.
  turtle_forward_impl<kH, float, V, W>(fa, pr.net, pr.st);
  const std::vector<float> kernel_theta = theta_new, kernel_m = m_new;
  for (int64_t j = 0; j < n; j += W) {
    Group g;
    io_in(j, g);
    mlp(g);
    io_out(j, g);
  }
  rec.phases_match_kernel = same_bits(kernel_theta.data(), theta_new.data(), n) &&
                            same_bits(kernel_m.data(), m_new.data(), n);
  rec.print(ring[0].z[0][0] + ring[1].u[0] + acc[0][0] + d_weight[0][0]);
  return rec.phases_match_kernel ? 0 : 3;
}

}  // namespace LO_CAPABILITY
}  // namespace cpu
}  // namespace lo

LO_PHASES_MAIN(lo::cpu::LO_CAPABILITY::run)
