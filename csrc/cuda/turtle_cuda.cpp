// Torch glue of turtle_step on CUDA: argument checks, device guard and current stream, allocation
// of the outputs and of the kernels' scratch, dtype dispatch. The kernels are
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
  const bool f32 = theta.scalar_type() == at::kFloat;
  const int64_t scratch_bytes = f32 ? turtle_forward_scratch_bytes<float>(call.net)
                                    : turtle_forward_scratch_bytes<double>(call.net);
  // Only a network too large for shared memory needs any (turtle_kernel.h).
  at::Tensor scratch;
  if (scratch_bytes > 0) scratch = at::empty({scratch_bytes}, theta.options().dtype(at::kByte));
  void* scratch_ptr = scratch_bytes > 0 ? scratch.data_ptr() : nullptr;
  const Status status =
      f32 ? ::lo::cuda::turtle_forward<float>(call.args<float>(), call.net,
                                              make_turtle_step<float>(t, beta, grad_clamp),
                                              scratch_ptr, stream)
          : ::lo::cuda::turtle_forward<double>(call.args<double>(), call.net,
                                               make_turtle_step<double>(t, beta, grad_clamp),
                                               scratch_ptr, stream);
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
  const bool f32 = theta.scalar_type() == at::kFloat;
  const int64_t scratch_bytes = f32 ? turtle_backward_scratch_bytes<float>(theta.numel(), call.net)
                                    : turtle_backward_scratch_bytes<double>(theta.numel(), call.net);
  at::Tensor scratch = at::empty({scratch_bytes}, theta.options().dtype(at::kByte));
  const Status status =
      f32 ? ::lo::cuda::turtle_backward<float>(call.args<float>(), call.net,
                                               make_turtle_step<float>(t, beta, grad_clamp),
                                               scratch.data_ptr(), stream)
          : ::lo::cuda::turtle_backward<double>(call.args<double>(), call.net,
                                                make_turtle_step<double>(t, beta, grad_clamp),
                                                scratch.data_ptr(), stream);
  check_status(status, op);
  return call.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {
  m.impl("turtle_step", &turtle_step_cuda);
  m.impl("turtle_step_backward", &turtle_step_backward_cuda);
}

}  // namespace cuda
}  // namespace lo
