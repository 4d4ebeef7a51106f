// Autograd of meta_lstm_step: the backward is the meta_lstm_step_backward op, which recomputes the
// gates from the saved inputs (nothing but the inputs is saved).
#include <torch/library.h>

#include <tuple>

#include "autograd/autograd_support.h"

namespace lo {
namespace autograd {
namespace {

using T = const at::Tensor&;
using Tensor5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor15 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor, at::Tensor>;
using StepSig = Tensor5(T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, double, double, bool);
using BackwardSig = Tensor15(T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, T, double,
                             double, bool);
constexpr int kInputs = 15;  // theta, grad, loss, h, c, f_prev, i_prev and the eight meta-weights

const auto& step_op() {
  static const auto op = find_op<StepSig>("learnedopt::meta_lstm_step");
  return op;
}
const auto& backward_op() {
  static const auto op = find_op<BackwardSig>("learnedopt::meta_lstm_step_backward");
  return op;
}

template <typename Tuple, size_t... I>
variable_list to_list(const Tuple& t, std::index_sequence<I...>) {
  return {std::get<I>(t)...};
}

struct MetaLSTMStep : public torch::autograd::Function<MetaLSTMStep> {
  static variable_list forward(AutogradContext* ctx, T theta, T grad, T loss, T h, T c, T f_prev,
                               T i_prev, T w_ih, T w_hh, T b_ih, T b_hh, T w_f, T b_f, T w_i,
                               T b_i, double p, double log_eps, bool strict) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward(
        {theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i});
    ctx->saved_data["p"] = p;
    ctx->saved_data["log_eps"] = log_eps;
    ctx->saved_data["strict"] = strict;
    return to_list(step_op().call(theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh,
                                  w_f, b_f, w_i, b_i, p, log_eps, strict),
                   std::make_index_sequence<5>{});
  }

  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    variable_list grads = to_list(
        backward_op().call(g[0], g[1], g[2], g[3], g[4], s[0], s[1], s[2], s[3], s[4], s[5], s[6],
                           s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14],
                           ctx->saved_data["p"].toDouble(), ctx->saved_data["log_eps"].toDouble(),
                           ctx->saved_data["strict"].toBool()),
        std::make_index_sequence<kInputs>{});
    grads.resize(kInputs + 3);  // p, log_eps, strict: no gradient
    return grads;
  }
};

Tensor5 meta_lstm_step_autograd(T theta, T grad, T loss, T h, T c, T f_prev, T i_prev, T w_ih,
                                T w_hh, T b_ih, T b_hh, T w_f, T b_f, T w_i, T b_i, double p,
                                double log_eps, bool strict) {
  const variable_list out = MetaLSTMStep::apply(theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh,
                                                b_ih, b_hh, w_f, b_f, w_i, b_i, p, log_eps, strict);
  return {out[0], out[1], out[2], out[3], out[4]};
}

Tensor15 meta_lstm_step_backward_autograd(T g_theta, T g_h, T g_c, T g_f, T g_i, T theta, T grad,
                                          T loss, T h, T c, T f_prev, T i_prev, T w_ih, T w_hh,
                                          T b_ih, T b_hh, T w_f, T b_f, T w_i, T b_i, double p,
                                          double log_eps, bool strict) {
  variable_list d;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    d = to_list(backward_op().call(g_theta, g_h, g_c, g_f, g_i, theta, grad, loss, h, c, f_prev,
                                   i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i, p, log_eps,
                                   strict),
                std::make_index_sequence<kInputs>{});
  }
  d = refuse_further_differentiation(
      "learnedopt::meta_lstm_step_backward",
      {g_theta, g_h, g_c, g_f, g_i, theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih,
       b_hh, w_f, b_f, w_i, b_i},
      d);
  return {d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13],
          d[14]};
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, Autograd, m) {
  m.impl("meta_lstm_step", &meta_lstm_step_autograd);
  m.impl("meta_lstm_step_backward", &meta_lstm_step_backward_autograd);
}

}  // namespace autograd
}  // namespace lo
