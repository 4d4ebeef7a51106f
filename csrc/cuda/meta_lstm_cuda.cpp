// Torch glue of meta_lstm_step and its backward on CUDA: checks, device guard, current stream,
// output and scratch allocation, dtype dispatch. The kernels are in meta_lstm_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/meta_lstm_glue.h"
#include "cuda/glue.h"
#include "cuda/meta_lstm_kernel.h"

namespace lo {
namespace cuda {
namespace {

// Inputs in schema order: theta, grad, loss, h, c, f_prev, i_prev, w_ih, ..., b_i. The loss
// pointer is task `task`'s (a device pointer: no host synchronisation).
template <typename S>
MetaLSTMDeviceWeights<S> device_weights(const std::vector<at::Tensor>& in, const MetaLSTMShape& s,
                                        int64_t task, double p, double log_eps, bool strict) {
  return {in[2].data_ptr<S>() + task, in[7].data_ptr<S>(),  in[8].data_ptr<S>(),
          in[9].data_ptr<S>(),  in[10].data_ptr<S>(), in[11].data_ptr<S>(),
          in[12].data_ptr<S>(), in[13].data_ptr<S>(), in[14].data_ptr<S>(),
          static_cast<int>(s.hidden), static_cast<int>(s.input_size),
          PreprocessParams<S>::make(p, log_eps, strict)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> meta_lstm_step_cuda(
    const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& loss, const at::Tensor& h,
    const at::Tensor& c, const at::Tensor& f_prev, const at::Tensor& i_prev, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f,
    const at::Tensor& b_f, const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps,
    bool strict) {
  constexpr const char* op = "meta_lstm_step";
  const std::vector<at::Tensor> raw = {theta, grad, loss, h, c, f_prev, i_prev, w_ih,
                                       w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i};
  const MetaLSTMShape s = check_meta_lstm_inputs(op, raw, p, log_eps);
  check_cuda(op, "theta", theta);
  const c10::cuda::CUDAGuard guard(theta.device());
  const std::vector<at::Tensor> in = contiguous_all(raw);
  MetaLSTMOutputs out(in);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  // One launch per task segment (common/meta_lstm_glue.h), in stream order.
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), op, [&] {
    for (int64_t b = 0; b < s.tasks && status == Status::kOk; ++b) {
      const int64_t v = meta_lstm_segment_offset(s, b), st = meta_lstm_segment_state_offset(s, b);
      const MetaLSTMCudaForwardArgs<scalar_t> a{
          in[0].data_ptr<scalar_t>() + v, in[1].data_ptr<scalar_t>() + v,
          in[3].data_ptr<scalar_t>() + st, in[4].data_ptr<scalar_t>() + st,
          in[5].data_ptr<scalar_t>() + v, in[6].data_ptr<scalar_t>() + v,
          out.theta_new.data_ptr<scalar_t>() + v, out.h_new.data_ptr<scalar_t>() + st,
          out.c_new.data_ptr<scalar_t>() + st, out.f.data_ptr<scalar_t>() + v,
          out.i.data_ptr<scalar_t>() + v, s.segment(),
          device_weights<scalar_t>(in, s, b, p, log_eps, strict)};
      status = meta_lstm_forward_cuda<scalar_t>(a, stream);
    }
  });
  check_status(status, op);
  return {out.theta_new, out.h_new, out.c_new, out.f, out.i};
}

// On CUDA the op computes out of place and copies into the state: the caching allocator makes
// the fresh outputs cheap there (the CPU's page faults are what the in-place variant avoids), and
// the CUDA kernels' reads and writes of one coordinate are not ordered for in-place use.
at::Tensor meta_lstm_step_inplace_cuda(
    const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& loss, const at::Tensor& h,
    const at::Tensor& c, const at::Tensor& f_prev, const at::Tensor& i_prev, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f,
    const at::Tensor& b_f, const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps,
    bool strict) {
  const std::vector<at::Tensor> raw = {theta, grad, loss, h, c, f_prev, i_prev, w_ih,
                                       w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i};
  check_meta_lstm_inplace_state("meta_lstm_step_inplace", raw);
  auto [theta_new, h_new, c_new, f, i] = meta_lstm_step_cuda(
      theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i, p,
      log_eps, strict);
  h.copy_(h_new);
  c.copy_(c_new);
  f_prev.copy_(f);
  i_prev.copy_(i);
  return theta_new;
}

MetaLSTMInputGrads meta_lstm_step_backward_cuda(
    const at::Tensor& g_theta_new, const at::Tensor& g_h_new, const at::Tensor& g_c_new,
    const at::Tensor& g_f, const at::Tensor& g_i, const at::Tensor& theta, const at::Tensor& grad,
    const at::Tensor& loss, const at::Tensor& h, const at::Tensor& c, const at::Tensor& f_prev,
    const at::Tensor& i_prev, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f, const at::Tensor& b_f,
    const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps, bool strict) {
  constexpr const char* op = "meta_lstm_step_backward";
  const std::vector<at::Tensor> raw = {theta, grad, loss, h, c, f_prev, i_prev, w_ih,
                                       w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i};
  const MetaLSTMShape s = check_meta_lstm_inputs(op, raw, p, log_eps);
  check_cuda(op, "theta", theta);
  const std::vector<at::Tensor> raw_g = {g_theta_new, g_h_new, g_c_new, g_f, g_i};
  check_meta_lstm_output_grads(op, raw_g, raw);
  const c10::cuda::CUDAGuard guard(theta.device());
  const std::vector<at::Tensor> in = contiguous_all(raw), g = contiguous_all(raw_g);
  MetaLSTMBackwardOutputs out(in, s);
  const std::vector<at::Tensor>& d = out.per_coord;
  // Sized for one segment: the launches of successive segments are stream-ordered and reuse it.
  at::Tensor scratch = at::empty(
      {meta_lstm_backward_scratch_size(s.segment(), static_cast<int>(s.hidden),
                                       static_cast<int>(s.input_size), theta.element_size())},
      in[0].options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), op, [&] {
    for (int64_t b = 0; b < s.tasks && status == Status::kOk; ++b) {
      const int64_t v = meta_lstm_segment_offset(s, b), st = meta_lstm_segment_state_offset(s, b);
      const MetaLSTMCudaBackwardArgs<scalar_t> a{
          g[0].data_ptr<scalar_t>() + v, g[1].data_ptr<scalar_t>() + st,
          g[2].data_ptr<scalar_t>() + st, g[3].data_ptr<scalar_t>() + v,
          g[4].data_ptr<scalar_t>() + v,
          in[0].data_ptr<scalar_t>() + v, in[1].data_ptr<scalar_t>() + v,
          in[3].data_ptr<scalar_t>() + st, in[4].data_ptr<scalar_t>() + st,
          in[5].data_ptr<scalar_t>() + v, in[6].data_ptr<scalar_t>() + v,
          d[0].data_ptr<scalar_t>() + v, d[1].data_ptr<scalar_t>() + v,
          d[2].data_ptr<scalar_t>() + st, d[3].data_ptr<scalar_t>() + st,
          d[4].data_ptr<scalar_t>() + v, d[5].data_ptr<scalar_t>() + v,
          out.flat[b].data_ptr<scalar_t>(), scratch.data_ptr<double>(), s.segment(),
          device_weights<scalar_t>(in, s, b, p, log_eps, strict)};
      status = meta_lstm_backward_cuda<scalar_t>(a, stream);
    }
  });
  check_status(status, op);
  return assemble_meta_lstm_input_grads(out.per_coord, out.flat, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {
  m.impl("meta_lstm_step", &meta_lstm_step_cuda);
  m.impl("meta_lstm_step_inplace", &meta_lstm_step_inplace_cuda);
  m.impl("meta_lstm_step_backward", &meta_lstm_step_backward_cuda);
}

}  // namespace cuda
}  // namespace lo
