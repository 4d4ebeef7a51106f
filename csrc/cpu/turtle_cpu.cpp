// Torch glue of turtle_step on the CPU: argument checks, packing of the MLP, output allocation,
// dtype and SIMD dispatch. The per-coordinate math is in common/turtle_math.h.
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

template <typename S>
TurtleForwardArgs<S> forward_args(const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& m,
                                  const at::Tensor& alpha, const at::Tensor& params,
                                  at::Tensor& theta_new, at::Tensor& m_new) {
  return {theta.data_ptr<S>(), grad.data_ptr<S>(),      m.data_ptr<S>(),
          alpha.data_ptr<S>(), params.data_ptr<S>(),    theta_new.data_ptr<S>(),
          m_new.data_ptr<S>(), theta.numel()};
}

std::tuple<at::Tensor, at::Tensor> turtle_step_cpu(const at::Tensor& theta, const at::Tensor& grad,
                                               const at::Tensor& m, int64_t t,
                                               const at::Tensor& alpha, at::TensorList weights,
                                               at::TensorList biases, double beta,
                                               double grad_clamp) {
  check_turtle_args("turtle_step", theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  const at::Tensor theta_c = theta.contiguous(), grad_c = grad.contiguous(), m_c = m.contiguous(),
                   alpha_c = alpha.contiguous();
  const PackedTurtleNet packed = pack_turtle_net(weights, biases, t);
  at::Tensor theta_new = at::empty_like(theta_c), m_new = at::empty_like(theta_c);
  const TurtleKernels k = kernels();
  if (theta.scalar_type() == at::kFloat) {
    k.forward_f32(forward_args<float>(theta_c, grad_c, m_c, alpha_c, packed.params, theta_new, m_new),
                  packed.net, make_turtle_step<float>(t, beta, grad_clamp));
  } else {
    k.forward_f64(forward_args<double>(theta_c, grad_c, m_c, alpha_c, packed.params, theta_new, m_new),
                  packed.net, make_turtle_step<double>(t, beta, grad_clamp));
  }
  return {theta_new, m_new};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
turtle_step_backward_cpu(const at::Tensor& d_theta_new, const at::Tensor& d_m_new,
                     const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& m, int64_t t,
                     const at::Tensor& alpha, at::TensorList weights, at::TensorList biases,
                     double beta, double grad_clamp) {
  const char* op = "turtle_step_backward";
  check_turtle_args(op, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  check_turtle_output_grads(op, d_theta_new, d_m_new, theta);
  const at::Tensor dt_c = d_theta_new.contiguous(), dm_c = d_m_new.contiguous(),
                   grad_c = grad.contiguous(), m_c = m.contiguous(), alpha_c = alpha.contiguous();
  const PackedTurtleNet packed = pack_turtle_net(weights, biases, t);
  at::Tensor d_theta = at::empty_like(grad_c), d_grad = at::empty_like(grad_c),
             d_m = at::empty_like(grad_c), d_alpha = at::empty_like(grad_c),
             d_params = at::empty_like(packed.params);
  const TurtleKernels k = kernels();
  if (theta.scalar_type() == at::kFloat) {
    using S = float;
    k.backward_f32({dt_c.data_ptr<S>(), dm_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
                    alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(), d_theta.data_ptr<S>(),
                    d_grad.data_ptr<S>(), d_m.data_ptr<S>(), d_alpha.data_ptr<S>(),
                    d_params.data_ptr<S>(), theta.numel()},
                   packed.net, make_turtle_step<S>(t, beta, grad_clamp));
  } else {
    using S = double;
    k.backward_f64({dt_c.data_ptr<S>(), dm_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
                    alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(), d_theta.data_ptr<S>(),
                    d_grad.data_ptr<S>(), d_m.data_ptr<S>(), d_alpha.data_ptr<S>(),
                    d_params.data_ptr<S>(), theta.numel()},
                   packed.net, make_turtle_step<S>(t, beta, grad_clamp));
  }
  auto [d_weights, d_biases] = unpack_turtle_grads(d_params, packed.net, weights, t);
  return {d_theta, d_grad, d_m, d_alpha, std::move(d_weights), std::move(d_biases)};
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CPU, m) {
  m.impl("turtle_step", &turtle_step_cpu);
  m.impl("turtle_step_backward", &turtle_step_backward_cpu);
}

}  // namespace cpu
}  // namespace lo
