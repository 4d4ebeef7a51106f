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
  const TurtleForwardCall call(theta, grad, m, t, alpha, weights, biases);
  const Status status =
      theta.scalar_type() == at::kFloat
          ? ::lo::cuda::turtle_forward<float>(call.args<float>(), call.packed.net,
                                              make_turtle_step<float>(t, beta, grad_clamp), stream)
          : ::lo::cuda::turtle_forward<double>(call.args<double>(), call.packed.net,
                                               make_turtle_step<double>(t, beta, grad_clamp), stream);
  check_status(status, op);
  return {call.theta_new, call.m_new};
}

TurtleInputGrads turtle_step_backward_cuda(const at::Tensor& d_theta_new, const at::Tensor& d_m_new,
                                           const at::Tensor& theta, const at::Tensor& grad,
                                           const at::Tensor& m, int64_t t, const at::Tensor& alpha,
                                           at::TensorList weights, at::TensorList biases,
                                           double beta, double grad_clamp) {
  const char* op = "turtle_step_backward";
  check_turtle_args(op, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp);
  check_turtle_output_grads(op, d_theta_new, d_m_new, theta);
  check_cuda(op, "theta", theta);
  const c10::cuda::CUDAGuard guard(theta.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const TurtleBackwardCall call(d_theta_new, d_m_new, grad, m, t, alpha, weights, biases);
  at::Tensor scratch = at::empty({turtle_backward_scratch_bytes(theta.numel(), call.packed.net)},
                                 theta.options().dtype(at::kByte));
  const Status status =
      theta.scalar_type() == at::kFloat
          ? ::lo::cuda::turtle_backward<float>(call.args<float>(), call.packed.net,
                                               make_turtle_step<float>(t, beta, grad_clamp),
                                               scratch.data_ptr(), stream)
          : ::lo::cuda::turtle_backward<double>(call.args<double>(), call.packed.net,
                                                make_turtle_step<double>(t, beta, grad_clamp),
                                                scratch.data_ptr(), stream);
  check_status(status, op);
  return call.result(weights, t);
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {
  m.impl("turtle_step", &turtle_step_cuda);
  m.impl("turtle_step_backward", &turtle_step_backward_cuda);
}

}  // namespace cuda
}  // namespace lo
