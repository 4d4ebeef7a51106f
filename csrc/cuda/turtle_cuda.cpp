// Torch glue of turtle_step on CUDA: argument checks, device guard and current stream, packing of
// the MLP, allocation of the outputs and of the backward's scratch, dtype dispatch. The kernels are
// in turtle_kernel.cu, the per-coordinate math in common/turtle_math.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/turtle_glue.h"
#include "cuda/glue.h"
#include "cuda/turtle_kernel.h"

namespace lo {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> turtle_step_cuda(const at::Tensor& theta, const at::Tensor& grad,
                                               const at::Tensor& m, int64_t t,
                                               const at::Tensor& alpha, at::TensorList weights,
                                               at::TensorList biases, double beta,
                                               double grad_clamp) {
  const char* op = "turtle_step";
  check_turtle_args(op, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  check_cuda(op, "theta", theta);
  const c10::cuda::CUDAGuard guard(theta.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor theta_c = theta.contiguous(), grad_c = grad.contiguous(), m_c = m.contiguous(),
                   alpha_c = alpha.contiguous();
  const PackedTurtleNet packed = pack_turtle_net(weights, biases, t);
  at::Tensor theta_new = at::empty_like(theta_c), m_new = at::empty_like(theta_c);
  Status status;
  if (theta.scalar_type() == at::kFloat) {
    using S = float;
    status = ::lo::cuda::turtle_forward<S>({theta_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
                                alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(),
                                theta_new.data_ptr<S>(), m_new.data_ptr<S>(), theta.numel()},
                               packed.net, make_turtle_step<S>(t, beta, grad_clamp), stream);
  } else {
    using S = double;
    status = ::lo::cuda::turtle_forward<S>({theta_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
                                alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(),
                                theta_new.data_ptr<S>(), m_new.data_ptr<S>(), theta.numel()},
                               packed.net, make_turtle_step<S>(t, beta, grad_clamp), stream);
  }
  check_status(status, op);
  return {theta_new, m_new};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
turtle_step_backward_cuda(const at::Tensor& d_theta_new, const at::Tensor& d_m_new,
                     const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& m, int64_t t,
                     const at::Tensor& alpha, at::TensorList weights, at::TensorList biases,
                     double beta, double grad_clamp) {
  const char* op = "turtle_step_backward";
  check_turtle_args(op, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  check_turtle_output_grads(op, d_theta_new, d_m_new, theta);
  check_cuda(op, "theta", theta);
  const c10::cuda::CUDAGuard guard(theta.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor dt_c = d_theta_new.contiguous(), dm_c = d_m_new.contiguous(),
                   grad_c = grad.contiguous(), m_c = m.contiguous(), alpha_c = alpha.contiguous();
  const PackedTurtleNet packed = pack_turtle_net(weights, biases, t);
  const int64_t n = theta.numel();
  at::Tensor d_theta = at::empty_like(grad_c), d_grad = at::empty_like(grad_c),
             d_m = at::empty_like(grad_c), d_alpha = at::empty_like(grad_c),
             d_params = at::empty_like(packed.params);
  at::Tensor scratch = at::empty({turtle_backward_scratch_bytes(n, packed.net)},
                                 theta.options().dtype(at::kByte));
  Status status;
  if (theta.scalar_type() == at::kFloat) {
    using S = float;
    status = ::lo::cuda::turtle_backward<S>(
        {dt_c.data_ptr<S>(), dm_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
         alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(), d_theta.data_ptr<S>(),
         d_grad.data_ptr<S>(), d_m.data_ptr<S>(), d_alpha.data_ptr<S>(), d_params.data_ptr<S>(), n},
        packed.net, make_turtle_step<S>(t, beta, grad_clamp), scratch.data_ptr(), stream);
  } else {
    using S = double;
    status = ::lo::cuda::turtle_backward<S>(
        {dt_c.data_ptr<S>(), dm_c.data_ptr<S>(), grad_c.data_ptr<S>(), m_c.data_ptr<S>(),
         alpha_c.data_ptr<S>(), packed.params.data_ptr<S>(), d_theta.data_ptr<S>(),
         d_grad.data_ptr<S>(), d_m.data_ptr<S>(), d_alpha.data_ptr<S>(), d_params.data_ptr<S>(), n},
        packed.net, make_turtle_step<S>(t, beta, grad_clamp), scratch.data_ptr(), stream);
  }
  check_status(status, op);
  auto [d_weights, d_biases] = unpack_turtle_grads(d_params, packed.net, weights, t);
  return {d_theta, d_grad, d_m, d_alpha, std::move(d_weights), std::move(d_biases)};
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {
  m.impl("turtle_step", &turtle_step_cuda);
  m.impl("turtle_step_backward", &turtle_step_backward_cuda);
}

}  // namespace cuda
}  // namespace lo
