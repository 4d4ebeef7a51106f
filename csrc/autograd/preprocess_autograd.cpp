// Autograd of preprocess: the backward is the preprocess_backward op (SPEC §1's exact derivative).
#include <torch/library.h>

#include "autograd/autograd_support.h"

namespace lo {
namespace autograd {
namespace {

using PreprocessSig = at::Tensor(const at::Tensor&, double, double, bool);
using PreprocessBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, double, bool);

const auto& preprocess_op() {
  static const auto op = find_op<PreprocessSig>("learnedopt::preprocess");
  return op;
}
const auto& preprocess_backward_op() {
  static const auto op = find_op<PreprocessBackwardSig>("learnedopt::preprocess_backward");
  return op;
}

struct Preprocess : public torch::autograd::Function<Preprocess> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double p, double log_eps,
                            bool strict) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x});
    ctx->saved_data["p"] = p;
    ctx->saved_data["log_eps"] = log_eps;
    ctx->saved_data["strict"] = strict;
    return preprocess_op().call(x, p, log_eps, strict);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor grad_x = preprocess_backward_op().call(
        grad_out[0], x, ctx->saved_data["p"].toDouble(), ctx->saved_data["log_eps"].toDouble(),
        ctx->saved_data["strict"].toBool());
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor preprocess_autograd(const at::Tensor& x, double p, double log_eps, bool strict) {
  return Preprocess::apply(x, p, log_eps, strict);
}

at::Tensor preprocess_backward_autograd(const at::Tensor& grad_out, const at::Tensor& x, double p,
                                        double log_eps, bool strict) {
  at::Tensor grad_x;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grad_x = preprocess_backward_op().call(grad_out, x, p, log_eps, strict);
  }
  return refuse_further_differentiation("learnedopt::preprocess_backward", {grad_out, x},
                                        {grad_x})[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, Autograd, m) {
  m.impl("preprocess", &preprocess_autograd);
  m.impl("preprocess_backward", &preprocess_backward_autograd);
}

}  // namespace autograd
}  // namespace lo
