// Autograd of turtle_step: the backward is the turtle_step_backward op, which re-runs the MLP from
// the saved inputs (its activations are never stored).
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "autograd/autograd_support.h"

namespace lo {
namespace autograd {
namespace {

using T = const at::Tensor&;
using StepSig = std::tuple<at::Tensor, at::Tensor>(T, T, T, int64_t, T, at::TensorList,
                                                   at::TensorList, double, double);
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  std::vector<at::Tensor>, std::vector<at::Tensor>>;
using BackwardSig = BackwardResult(T, T, T, T, T, int64_t, T, at::TensorList, at::TensorList, double,
                                   double);

const auto& step_op() {
  static const auto op = find_op<StepSig>("learnedopt::turtle_step");
  return op;
}
const auto& backward_op() {
  static const auto op = find_op<BackwardSig>("learnedopt::turtle_step_backward");
  return op;
}

// d_theta, d_grad, d_m, d_alpha, then the weight and the bias gradients, in one list.
variable_list flatten(const BackwardResult& r) {
  variable_list out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
  out.insert(out.end(), std::get<4>(r).begin(), std::get<4>(r).end());
  out.insert(out.end(), std::get<5>(r).begin(), std::get<5>(r).end());
  return out;
}

struct TurtleStep : public torch::autograd::Function<TurtleStep> {
  static variable_list forward(AutogradContext* ctx, T theta, T grad, T m, int64_t t, T alpha,
                               at::TensorList weights, at::TensorList biases, double beta,
                               double grad_clamp) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    variable_list saved = {theta, grad, m, alpha};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["t"] = t;
    ctx->saved_data["layers"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["grad_clamp"] = grad_clamp;
    auto [theta_new, m_new] = step_op().call(theta, grad, m, t, alpha, weights, biases, beta,
                                             grad_clamp);
    return {theta_new, m_new};
  }

  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const int64_t layers = ctx->saved_data["layers"].toInt();
    const at::TensorList weights(s.data() + 4, layers), biases(s.data() + 4 + layers, layers);
    const BackwardResult r = backward_op().call(
        g[0], g[1], s[0], s[1], s[2], ctx->saved_data["t"].toInt(), s[3], weights, biases,
        ctx->saved_data["beta"].toDouble(), ctx->saved_data["grad_clamp"].toDouble());
    // One entry per forward argument, a list argument counting one per tensor.
    variable_list grads = {std::get<0>(r), std::get<1>(r), std::get<2>(r), at::Tensor(),
                           std::get<3>(r)};
    grads.insert(grads.end(), std::get<4>(r).begin(), std::get<4>(r).end());
    grads.insert(grads.end(), std::get<5>(r).begin(), std::get<5>(r).end());
    grads.emplace_back();  // beta
    grads.emplace_back();  // grad_clamp
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> turtle_step_autograd(T theta, T grad, T m, int64_t t, T alpha,
                                                        at::TensorList weights,
                                                        at::TensorList biases, double beta,
                                                        double grad_clamp) {
  const variable_list out =
      TurtleStep::apply(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  return {out[0], out[1]};
}

BackwardResult turtle_step_backward_autograd(T g_theta, T g_m, T theta, T grad, T m, int64_t t,
                                             T alpha, at::TensorList weights,
                                             at::TensorList biases, double beta,
                                             double grad_clamp) {
  BackwardResult r;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    r = backward_op().call(g_theta, g_m, theta, grad, m, t, alpha, weights, biases, beta,
                           grad_clamp);
  }
  if (!at::GradMode::is_enabled()) return r;
  variable_list inputs = {g_theta, g_m, theta, grad, m, alpha};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  inputs.insert(inputs.end(), biases.begin(), biases.end());
  const variable_list d =
      refuse_further_differentiation("learnedopt::turtle_step_backward", inputs, flatten(r));
  const int64_t layers = static_cast<int64_t>(weights.size());
  return {d[0], d[1], d[2], d[3], std::vector<at::Tensor>(d.begin() + 4, d.begin() + 4 + layers),
          std::vector<at::Tensor>(d.begin() + 4 + layers, d.end())};
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, Autograd, m) {
  m.impl("turtle_step", &turtle_step_autograd);
  m.impl("turtle_step_backward", &turtle_step_backward_autograd);
}

}  // namespace autograd
}  // namespace lo
