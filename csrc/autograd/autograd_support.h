// What the ops' autograd kernels (csrc/autograd/*_autograd.cpp) share.
//
// Autograd lives in C++, registered for the Autograd dispatch key, rather than in Python with
// torch.library.register_autograd: the Python route costs ~150 us of interpreter work per forward +
// backward (argument flattening, a Python autograd.Function), as much as the kernels themselves
// at the few thousand coordinates of a sine learner. functorch refuses C++ Functions, so under
// torch.func transforms the Python wrappers take a Python route over the same ops instead
// (learnedopt/ops/_functorch.py). The fake (meta) kernels stay in Python (learnedopt/ops/*.py),
// which is all torch.compile needs.
//
// The backward ops are differentiated zero times. Second-order meta-training never needs it: the
// second-order term reaches the meta-parameters through the learner's own double backward (the
// graph of the gradient g fed into the op), and the op is differentiated once. So each *_backward
// op's autograd kernel runs the op and, when its outputs would be recorded for another
// differentiation, gives them a grad_fn that raises a clear error instead of torch's warning and
// silently incomplete gradients.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <string>

namespace lo {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed dispatcher handle of the op `name` ("learnedopt::..."). Callers keep it in a static
// of their own, one per op: a cache keyed by the signature alone would hand one op's handle to
// another of the same signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Signature>();
}

// Identity on `outputs` (already computed below autograd) whose grad_fn, when autograd records
// one, refuses to run.
struct SingleBackwardOnly : public torch::autograd::Function<SingleBackwardOnly> {
  static variable_list forward(AutogradContext* ctx, const std::string& op, at::TensorList inputs,
                               const variable_list& outputs) {
    ctx->saved_data["op"] = op;
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, ctx->saved_data["op"].toStringRef(),
                " is not differentiable: the fused learnedopt ops support one backward pass. "
                "Second-order meta-gradients do not need more (they flow through the gradient "
                "input via the learner's own double backward). To differentiate an op's backward "
                "itself, use learnedopt.ops.set_backend('reference').");
    return {};
  }
};

// `outputs` of the backward op `op` on `inputs`, marked as not differentiable again when grad
// mode would record them.
inline variable_list refuse_further_differentiation(const std::string& op,
                                                    const variable_list& inputs,
                                                    const variable_list& outputs) {
  if (!at::GradMode::is_enabled()) return outputs;
  return SingleBackwardOnly::apply(op, at::TensorList(inputs), outputs);
}

}  // namespace autograd
}  // namespace lo
