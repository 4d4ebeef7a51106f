// Per-phase timing of the meta-learner LSTM's CPU kernels (hidden 20, Ravi's 4 inputs, float), for
// issue 15 item 1: where a group of W coordinates spends its time. Compiled by bench/kernel_phases.py
// once per instruction set with the extension's flags and -DLO_CAPABILITY=<cap>, so it runs the
// kernel header's own functions (gate_preactivations, meta_lstm_cell, meta_lstm_gates_backward,
// flush_weight_terms, load_rows, ...), not copies of them.
//
// Each phase runs alone in a loop over the groups of n coordinates, reading its inputs from and
// writing its outputs to a small ring of group buffers (L1/L2-resident, as the kernel's own per-group
// state is), with a compiler barrier per group so that nothing is hoisted out of the loop. The
// memory phase ("rows") moves the real (n, 20) arrays through the kernel's transposes. "whole" is
// the kernel itself (forward<> / backward<>) on one thread. The phases chained on one group must
// give the kernel's outputs bit for bit (checked, and reported as phases_match_kernel): the
// decomposition computes what the kernel computes.
//
// Output: one JSON object on stdout (harness.h).
#include "cpu/capability_variant.h"
#include "cpu/meta_lstm_kernel.h"


#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "harness.h"

namespace lo {
namespace cpu {
namespace LO_CAPABILITY {

using V = LO_VEC;
constexpr int W = sizeof(V) / sizeof(float);
constexpr int H = 20, D = 4, G = MetaLSTMInput<D>::grad_columns;
constexpr int kRing = 2;  // group buffers each phase cycles through

using namespace phases;

// One group's values as the phases pass them on (lane-major: one V per unit).
struct Group {
  V theta, grad, f_prev, i_prev, g_theta_new, g_f, g_i;
  V h[H], c[H], g_h_new[H], g_c_new[H];
  V xg[G], pre[4 * H], act[4 * H];
  V c_new[H], tanh_c[H], h_new[H], f, i, sigmoid_f, sigmoid_i, theta_new;
  V d_f, d_i, d_theta, d_f_prev, d_i_prev, d_gate[4 * H], d_c[H], d_h[H], d_xg[G], d_grad;
};

struct Problem {
  int64_t n;
  std::vector<float> theta, grad, h, c, f_prev, i_prev, g_theta_new, g_h_new, g_c_new, g_f, g_i;
  std::vector<float> w_ih, w_hh, gate_bias, w_f, b_f, w_i, b_i;
  MetaLSTMParams<float> P;

  explicit Problem(int64_t n_) : n(n_) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](std::vector<float>& v, int64_t size, float scale) {
      v.resize(size);
      for (auto& x : v) x = scale * normal(rng);
    };
    fill(theta, n, 0.1f), fill(grad, n, 0.01f), fill(h, n * H, 0.3f), fill(c, n * H, 0.5f);
    fill(f_prev, n, 1.0f), fill(i_prev, n, 1.0f), fill(g_theta_new, n, 1.0f), fill(g_h_new, n * H, 0.1f);
    fill(g_c_new, n * H, 0.1f), fill(g_f, n, 0.1f), fill(g_i, n, 0.1f);
    fill(w_ih, 4 * H * D, 0.3f), fill(w_hh, 4 * H * H, 0.2f), fill(gate_bias, 4 * H, 0.3f);
    fill(w_f, H + 2, 0.2f), fill(b_f, 1, 1.0f), fill(w_i, H + 2, 0.2f), fill(b_i, 1, 1.0f);
    P.w_ih = w_ih.data(), P.w_hh = w_hh.data(), P.gate_bias = gate_bias.data();
    P.w_f = w_f.data(), P.b_f = b_f.data(), P.w_i = w_i.data(), P.b_i = b_i.data();
    P.hidden = H;
    P.pp.p = 10.0f, P.pp.threshold = std::exp(-10.0f), P.pp.exp_p = std::exp(10.0f);
    P.pp.log_eps = 0.0f, P.pp.strict = false;
  }

  // Group j's inputs, through the kernel's loads and transposes.
  void load(int64_t j, Group& g) const {
    load_rows<H, float, V, W>(h.data(), j, W, H, g.h);
    load_rows<H, float, V, W>(c.data(), j, W, H, g.c);
    load_rows<H, float, V, W>(g_h_new.data(), j, W, H, g.g_h_new);
    load_rows<H, float, V, W>(g_c_new.data(), j, W, H, g.g_c_new);
    g.theta = load_lanes<float, V, W>(theta.data(), j, W), g.grad = load_lanes<float, V, W>(grad.data(), j, W);
    g.f_prev = load_lanes<float, V, W>(f_prev.data(), j, W), g.i_prev = load_lanes<float, V, W>(i_prev.data(), j, W);
    g.g_theta_new = load_lanes<float, V, W>(g_theta_new.data(), j, W);
    g.g_f = load_lanes<float, V, W>(g_f.data(), j, W), g.g_i = load_lanes<float, V, W>(g_i.data(), j, W);
  }
};

// The forward's compute phases, in the order step_forward runs them.
inline void phase_preprocess(const Problem& pr, Group& g) { meta_lstm_grad_input<D>(g.grad, pr.P.pp, g.xg); }
inline void phase_gates(const Problem& pr, Group& g) { gate_preactivations<H, D>(pr.P, g.xg, g.h, g.pre); }
inline void phase_activations(Group& g) {
  for (int q = 0; q < 4; ++q)
    for (int k = 0; k < H; ++k) g.act[q * H + k] = meta_lstm_activate_gate(q, g.pre[q * H + k]);
}
inline void phase_cells(const Problem& pr, Group& g) {
  const MetaLSTMParams<float>& P = pr.P;
  V f_sum = splat<V>(0), i_sum = splat<V>(0);
  for (int k = 0; k < H; ++k) {
    meta_lstm_cell(g.act[k], g.act[H + k], g.act[2 * H + k], g.act[3 * H + k], g.c[k], g.c_new[k],
                   g.tanh_c[k], g.h_new[k]);
    f_sum += splat<V>(P.w_f[k]) * g.h_new[k];
    i_sum += splat<V>(P.w_i[k]) * g.h_new[k];
  }
  meta_lstm_layer2(P, H, f_sum, i_sum, g.theta, g.f_prev, g.i_prev, g.f, g.i);
  g.sigmoid_f = sigmoid(g.f);
  g.sigmoid_i = sigmoid(g.i);
  g.theta_new = meta_lstm_update(g.sigmoid_f, g.sigmoid_i, g.theta, g.grad);
}

// The backward's own phases after its recomputed forward (the same order as backward<>).
inline void phase_cells_backward(const Problem& pr, Group& g) {
  const MetaLSTMParams<float>& P = pr.P;
  meta_lstm_layer2_backward(P, H, g.theta, g.grad, g.sigmoid_f, g.sigmoid_i, g.g_theta_new, g.g_f,
                            g.g_i, g.d_f, g.d_i, g.d_theta, g.d_f_prev, g.d_i_prev);
  for (int k = 0; k < H; ++k) {
    const V d_h_new = g.g_h_new[k] + g.d_f * splat<V>(P.w_f[k]) + g.d_i * splat<V>(P.w_i[k]);
    meta_lstm_cell_backward(d_h_new, g.g_c_new[k], g.act[k], g.act[H + k], g.act[2 * H + k],
                            g.act[3 * H + k], g.c[k], g.tanh_c[k], g.d_c[k], g.d_gate[k],
                            g.d_gate[H + k], g.d_gate[2 * H + k], g.d_gate[3 * H + k]);
  }
}
inline void phase_gates_backward(const Problem& pr, Group& g) {
  meta_lstm_gates_backward<H, D>(pr.P, g.d_gate, g.d_h, g.d_xg);
  g.d_grad = meta_lstm_grad_backward<D>(pr.P.pp, g.grad, g.g_theta_new, g.sigmoid_i, g.d_xg);
}

// The weight-gradient staging and outer products: kStage groups staged, then one flush.
struct WeightSums {
  MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  int n_factors = meta_lstm_factor_count(H), n_inputs = meta_lstm_input_count<D>(H);
  std::vector<V> buffer;
  WeightStage<V> stage;
  int ns = 0;
  WeightSums() : buffer(L.size + static_cast<int64_t>(n_factors + n_inputs) * kStage, splat<V>(0)) {
    stage = {buffer.data() + L.size, buffer.data() + L.size + n_factors * kStage};
  }
  void add(const Group& g) {
    V* F = stage.factors + ns;
    for (int r = 0; r < 4 * H; ++r) F[r * kStage] = g.d_gate[r];
    F[4 * H * kStage] = g.d_f;
    F[(4 * H + 1) * kStage] = g.d_i;
    V* X = stage.inputs + ns;
    for (int m = 0; m < H; ++m) X[m * kStage] = g.h[m];
    for (int d = 0; d < G; ++d) X[(H + d) * kStage] = g.xg[d];
    for (int k = 0; k < H; ++k) X[(H + G + k) * kStage] = g.h_new[k];
    X[(2 * H + G) * kStage] = g.theta;
    X[(2 * H + G + 1) * kStage] = g.f_prev;
    X[(2 * H + G + 2) * kStage] = g.i_prev;
    X[(2 * H + G + 3) * kStage] = splat<V>(1);
    if (++ns == kStage) {
      flush_weight_terms<D>(buffer.data(), L, H, stage, ns);
      ns = 0;
    }
  }
};

// The phases chained on every group give the kernel's forward outputs bit for bit.
bool forward_phases_match(const Problem& pr, const std::vector<float>& theta_new, const std::vector<float>& h_new,
                          const std::vector<float>& c_new) {
  Group g;
  std::vector<float> t(pr.n), hn(pr.n * H), cn(pr.n * H);
  for (int64_t j = 0; j < pr.n; j += W) {
    pr.load(j, g);
    phase_preprocess(pr, g), phase_gates(pr, g), phase_activations(g), phase_cells(pr, g);
    store_lanes<float, V, W>(t.data(), j, W, g.theta_new);
    store_rows<H, float, V, W>(hn.data(), j, W, H, g.h_new);
    store_rows<H, float, V, W>(cn.data(), j, W, H, g.c_new);
  }
  return same_bits(t.data(), theta_new.data(), pr.n) && same_bits(hn.data(), h_new.data(), pr.n * H) &&
         same_bits(cn.data(), c_new.data(), pr.n * H);
}

bool backward_phases_match(const Problem& pr, const std::vector<float>& d_theta, const std::vector<float>& d_grad,
                           const std::vector<float>& d_h) {
  Group g;
  std::vector<float> dt(pr.n), dg(pr.n), dh(pr.n * H);
  for (int64_t j = 0; j < pr.n; j += W) {
    pr.load(j, g);
    phase_preprocess(pr, g), phase_gates(pr, g), phase_activations(g), phase_cells(pr, g);
    phase_cells_backward(pr, g), phase_gates_backward(pr, g);
    store_lanes<float, V, W>(dt.data(), j, W, g.d_theta);
    store_lanes<float, V, W>(dg.data(), j, W, g.d_grad);
    store_rows<H, float, V, W>(dh.data(), j, W, H, g.d_h);
  }
  return same_bits(dt.data(), d_theta.data(), pr.n) && same_bits(dg.data(), d_grad.data(), pr.n) &&
         same_bits(dh.data(), d_h.data(), pr.n * H);
}

int run(int64_t n, double budget_s) {
  Record rec = start_record("meta_lstm", n, budget_s);
  const Problem pr(n);
  const int64_t groups = n / W;

  // The kernels themselves.
  std::vector<float> theta_new(n), h_new(n * H), c_new(n * H), f(n), i(n);
  MetaLSTMForwardArgs<float> fa{pr.theta.data(), pr.grad.data(), pr.h.data(), pr.c.data(), pr.f_prev.data(),
                                pr.i_prev.data(), theta_new.data(), h_new.data(), c_new.data(), f.data(),
                                i.data(), n, D, pr.P};
  rec.forward_seconds = median_seconds([&] { forward<H, D, float, V, W>(fa); }, budget_s);
  std::vector<float> d_theta(n), d_grad(n), d_h(n * H), d_c(n * H), d_f_prev(n), d_i_prev(n);
  std::vector<float> d_weights(meta_lstm_weight_grad_count<D>(H));
  const MetaLSTMPackedLayout L = meta_lstm_packed_layout<D>(H);
  std::vector<double> partials(num_chunks(n, meta_lstm_backward_chunk(n)) * L.size);
  MetaLSTMBackwardArgs<float> ba{pr.g_theta_new.data(), pr.g_h_new.data(), pr.g_c_new.data(), pr.g_f.data(),
                                 pr.g_i.data(), pr.theta.data(), pr.grad.data(), pr.h.data(), pr.c.data(),
                                 pr.f_prev.data(), pr.i_prev.data(), d_theta.data(), d_grad.data(), d_h.data(),
                                 d_c.data(), d_f_prev.data(), d_i_prev.data(), d_weights.data(), partials.data(),
                                 0.5f, n, D, pr.P};
  rec.backward_seconds = median_seconds([&] { backward<H, D, float, V, W>(ba); }, budget_s);

  // The phases, each alone over all groups.
  std::vector<Group> ring(kRing);
  for (int r = 0; r < kRing; ++r) {
    pr.load(r * W, ring[r]);
    phase_preprocess(pr, ring[r]), phase_gates(pr, ring[r]), phase_activations(ring[r]), phase_cells(pr, ring[r]);
    phase_cells_backward(pr, ring[r]), phase_gates_backward(pr, ring[r]);
  }
  auto time_phase = [&](const char* name, const char* pass, const std::function<void()>& fn) {
    rec.time(name, pass, fn, budget_s);
  };
  // Memory and transposes: the forward's two (n, H) loads and two stores plus five (n,) vectors.
  std::vector<float> sink_lanes(n);
  time_phase("rows", "forward", [&] {
    Group& g = ring[0];
    for (int64_t j = 0; j < n; j += W) {
      prefetch_rows(pr.h.data(), j, n, W, H);
      prefetch_rows(pr.c.data(), j, n, W, H);
      load_rows<H, float, V, W>(pr.h.data(), j, W, H, g.h);
      load_rows<H, float, V, W>(pr.c.data(), j, W, H, g.c);
      g.theta = load_lanes<float, V, W>(pr.theta.data(), j, W);
      store_lanes<float, V, W>(sink_lanes.data(), j, W, g.theta);
      store_rows<H, float, V, W>(h_new.data(), j, W, H, g.h);
      store_rows<H, float, V, W>(c_new.data(), j, W, H, g.c);
      barrier();
    }
  });
  time_phase("preprocess", "forward", over_groups(ring, groups, [&](Group& g) { phase_preprocess(pr, g); }));
  time_phase("gates", "forward", over_groups(ring, groups, [&](Group& g) { phase_gates(pr, g); }));
  time_phase("activations", "forward", over_groups(ring, groups, [&](Group& g) { phase_activations(g); }));
  time_phase("cells", "forward", over_groups(ring, groups, [&](Group& g) { phase_cells(pr, g); }));
  // The backward's extra rows: g_h_new, g_c_new loaded, d_h, d_c stored, as in backward<>.
  time_phase("rows", "backward", [&] {
    Group& g = ring[0];
    for (int64_t j = 0; j < n; j += W) {
      prefetch_rows(pr.g_h_new.data(), j, n, W, H);
      prefetch_rows(pr.g_c_new.data(), j, n, W, H);
      load_rows<H, float, V, W>(pr.g_h_new.data(), j, W, H, g.g_h_new);
      load_rows<H, float, V, W>(pr.g_c_new.data(), j, W, H, g.g_c_new);
      store_rows<H, float, V, W>(d_h.data(), j, W, H, g.g_h_new);
      store_rows<H, float, V, W>(d_c.data(), j, W, H, g.g_c_new);
      barrier();
    }
  });
  time_phase("cells_backward", "backward", over_groups(ring, groups, [&](Group& g) { phase_cells_backward(pr, g); }));
  time_phase("gates_backward", "backward", over_groups(ring, groups, [&](Group& g) { phase_gates_backward(pr, g); }));
  WeightSums sums;
  time_phase("weight_terms", "backward", over_groups(ring, groups, [&](Group& g) { sums.add(g); }));

  forward<H, D, float, V, W>(fa);
  backward<H, D, float, V, W>(ba);
  rec.phases_match_kernel = forward_phases_match(pr, theta_new, h_new, c_new) &&
                            backward_phases_match(pr, d_theta, d_grad, d_h);
  rec.print(sums.buffer[0][0] + ring[0].theta_new[0] + sink_lanes[0]);
  return rec.phases_match_kernel ? 0 : 3;
}

}  // namespace LO_CAPABILITY
}  // namespace cpu
}  // namespace lo

LO_PHASES_MAIN(lo::cpu::LO_CAPABILITY::run)
