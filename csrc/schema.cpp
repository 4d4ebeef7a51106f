// The one place where the learnedopt ops are declared. Kernels are registered per dispatch key:
// CPU in cpu/*_cpu.cpp, CUDA in cuda/*_cuda.cpp, Autograd in autograd/*_autograd.cpp; the fake
// (meta) kernels in learnedopt/ops/*.py.
//
// Every *_backward op returns the gradient of every tensor input, in input order. The backward ops
// are not themselves differentiable (see autograd/autograd_support.h).
//
// meta_lstm_step's loss is 0-d (one loss for all n coordinates) or of shape (B,) for a meta-batch
// of B tasks in one call: B >= 1 must divide n, and task b owns the contiguous coordinates
// [b*n/B, (b+1)*n/B) of theta, grad, f_prev, i_prev and the rows of h and c (its (B, n/B)
// parameters flattened row by row). The backward's loss gradient has the loss's shape.
#include <torch/library.h>

TORCH_LIBRARY(learnedopt, m) {
  m.def("preprocess(Tensor x, float p, float log_eps, bool strict) -> Tensor");
  m.def("preprocess_backward(Tensor grad_out, Tensor x, float p, float log_eps, bool strict) -> Tensor");

  m.def(
      "meta_lstm_step(Tensor theta, Tensor grad, Tensor loss, Tensor h, Tensor c, Tensor f_prev, "
      "Tensor i_prev, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor w_f, Tensor b_f, "
      "Tensor w_i, Tensor b_i, float p, float log_eps, bool strict) "
      "-> (Tensor theta_new, Tensor h_new, Tensor c_new, Tensor f, Tensor i)");
  // The forward with the recurrent state updated in place (h, c, f_prev, i_prev <- h_new, c_new,
  // f, i), theta_new returned: for optimizer steps, which need no autograd and keep their state.
  // It spares the allocation of the (n, H) outputs, whose fresh pages cost as much as the math at
  // large n on the CPU. Not differentiable.
  m.def(
      "meta_lstm_step_inplace(Tensor theta, Tensor grad, Tensor loss, Tensor(a!) h, Tensor(b!) c, "
      "Tensor(c!) f_prev, Tensor(d!) i_prev, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, "
      "Tensor w_f, Tensor b_f, Tensor w_i, Tensor b_i, float p, float log_eps, bool strict) "
      "-> Tensor theta_new");
  m.def(
      "meta_lstm_step_backward(Tensor grad_theta_new, Tensor grad_h_new, Tensor grad_c_new, "
      "Tensor grad_f, Tensor grad_i, Tensor theta, Tensor grad, Tensor loss, Tensor h, Tensor c, "
      "Tensor f_prev, Tensor i_prev, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, "
      "Tensor w_f, Tensor b_f, Tensor w_i, Tensor b_i, float p, float log_eps, bool strict) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");

  m.def(
      "turtle_step(Tensor theta, Tensor grad, Tensor m, int t, Tensor alpha, Tensor[] weights, "
      "Tensor[] biases, float beta, float grad_clamp) -> (Tensor theta_new, Tensor m_new)");
  m.def(
      "turtle_step_backward(Tensor grad_theta_new, Tensor grad_m_new, Tensor theta, Tensor grad, "
      "Tensor m, int t, Tensor alpha, Tensor[] weights, Tensor[] biases, float beta, "
      "float grad_clamp) -> (Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[])");
}
