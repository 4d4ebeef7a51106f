// Torch glue of turtle_step on the CPU: argument checks (the call's tensors come from
// common/turtle_glue.h), dtype and SIMD dispatch. The math is in common/turtle_math.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/turtle_glue.h"
#include "cpu/capability.h"
#include "cpu/turtle_kernel.h"

namespace lo {
namespace cpu {
namespace {

TurtleKernels kernels() {
  switch (capability()) {
    case Capability::kAVX512: return turtle_kernels_avx512();
    case Capability::kAVX2: return turtle_kernels_avx2();
    default: return turtle_kernels_baseline();
  }
}

std::tuple<at::Tensor, at::Tensor> turtle_step_cpu(const at::Tensor& theta, const at::Tensor& grad,
                                               const at::Tensor& m, int64_t t,
                                               const at::Tensor& alpha, at::TensorList weights,
                                               at::TensorList biases, double beta,
                                               double grad_clamp) {
  check_turtle_args("turtle_step", theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  const TurtleForwardCall call(theta, grad, m, t, alpha, weights, biases);
  const TurtleKernels k = kernels();
  if (theta.scalar_type() == at::kFloat) {
    k.forward_f32(call.args<float>(), call.net, make_turtle_step<float>(t, beta, grad_clamp));
  } else {
    k.forward_f64(call.args<double>(), call.net, make_turtle_step<double>(t, beta, grad_clamp));
  }
  return {call.theta_new, call.m_new};
}

TurtleInputGrads turtle_step_backward_cpu(const at::Tensor& d_theta_new, const at::Tensor& d_m_new,
                                          const at::Tensor& theta, const at::Tensor& grad,
                                          const at::Tensor& m, int64_t t, const at::Tensor& alpha,
                                          at::TensorList weights, at::TensorList biases,
                                          double beta, double grad_clamp) {
  const char* op = "turtle_step_backward";
  check_turtle_args(op, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  check_turtle_output_grads(op, d_theta_new, d_m_new, theta);
  const TurtleBackwardCall call(d_theta_new, d_m_new, grad, m, t, alpha, weights, biases);
  const TurtleKernels k = kernels();
  if (theta.scalar_type() == at::kFloat) {
    k.backward_f32(call.args<float>(), call.net, make_turtle_step<float>(t, beta, grad_clamp));
  } else {
    k.backward_f64(call.args<double>(), call.net, make_turtle_step<double>(t, beta, grad_clamp));
  }
  return call.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CPU, m) {
  m.impl("turtle_step", &turtle_step_cpu);
  m.impl("turtle_step_backward", &turtle_step_backward_cpu);
}

}  // namespace cpu
}  // namespace lo
