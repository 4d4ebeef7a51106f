// Torch glue of meta_lstm_step and its backward on the CPU: argument checks, output allocation,
// the per-task gate bias (which folds in the task's loss), the loop over task segments, dtype and
// SIMD dispatch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/meta_lstm_glue.h"
#include "common/meta_lstm_math.h"
#include "cpu/capability.h"
#include "cpu/meta_lstm_kernel.h"

namespace lo {
namespace cpu {
namespace {

MetaLSTMKernels kernels() {
  switch (capability()) {
    case Capability::kAVX512: return meta_lstm_kernels_avx512();
    case Capability::kAVX2: return meta_lstm_kernels_avx2();
    default: return meta_lstm_kernels_baseline();
  }
}

// Holds the weights' pointers and the gate bias (which folds in one task's loss) that
// MetaLSTMParams points into.
template <typename S>
struct ParamsHolder {
  std::vector<S> gate_bias;
  MetaLSTMParams<S> params;
  S loss;

  ParamsHolder(const std::vector<at::Tensor>& in, const MetaLSTMShape& s, int64_t task, double p,
               double log_eps, bool strict) {
    const PreprocessParams<S> pp = PreprocessParams<S>::make(p, log_eps, strict);
    const S* w_ih = in[7].data_ptr<S>();
    const S* b_ih = in[9].data_ptr<S>();
    const S* b_hh = in[10].data_ptr<S>();
    loss = in[2].data_ptr<S>()[task];
    gate_bias.resize(4 * s.hidden);
    for (int r = 0; r < 4 * s.hidden; ++r) {
      gate_bias[r] = s.input_size == 4 ? meta_lstm_gate_bias<4, S>(r, w_ih, b_ih, b_hh, loss, pp)
                                       : meta_lstm_gate_bias<1, S>(r, w_ih, b_ih, b_hh, loss, pp);
    }
    params = {w_ih,
              in[8].data_ptr<S>(),
              gate_bias.data(),
              in[11].data_ptr<S>(),
              in[12].data_ptr<S>(),
              in[13].data_ptr<S>(),
              in[14].data_ptr<S>(),
              static_cast<int>(s.hidden),
              pp};
  }
};

// One kernel run per task segment (meta_lstm_glue.h), each with its task's loss.
template <typename S>
void run_forward(const std::vector<at::Tensor>& in, const MetaLSTMShape& s, double p, double log_eps,
                 bool strict, MetaLSTMOutputs& out) {
  const MetaLSTMKernels k = kernels();
  for (int64_t b = 0; b < s.tasks; ++b) {
    ParamsHolder<S> holder(in, s, b, p, log_eps, strict);
    const int64_t v = meta_lstm_segment_offset(s, b), st = meta_lstm_segment_state_offset(s, b);
    MetaLSTMForwardArgs<S> a{in[0].data_ptr<S>() + v, in[1].data_ptr<S>() + v,
                             in[3].data_ptr<S>() + st, in[4].data_ptr<S>() + st,
                             in[5].data_ptr<S>() + v, in[6].data_ptr<S>() + v,
                             out.theta_new.data_ptr<S>() + v, out.h_new.data_ptr<S>() + st,
                             out.c_new.data_ptr<S>() + st, out.f.data_ptr<S>() + v,
                             out.i.data_ptr<S>() + v, s.segment(),
                             static_cast<int>(s.input_size), holder.params};
    if constexpr (std::is_same_v<S, float>) k.forward_f32(a);
    else k.forward_f64(a);
  }
}

// The checks, then the kernels for the inputs `raw` (schema order): into fresh outputs, or with
// `over_state` (meta_lstm_step_inplace) over the state itself.
MetaLSTMOutputs forward_call(const char* op, const std::vector<at::Tensor>& raw, double p,
                             double log_eps, bool strict, bool over_state) {
  const MetaLSTMShape s = check_meta_lstm_inputs(op, raw, p, log_eps);
  if (over_state) check_meta_lstm_inplace_state(op, raw);
  const std::vector<at::Tensor> in = contiguous_all(raw);  // the state as it is when over_state
  MetaLSTMOutputs out = over_state ? MetaLSTMOutputs(in, MetaLSTMOutputs::OverState{})
                                   : MetaLSTMOutputs(in);
  if (raw[0].scalar_type() == at::kFloat) {
    run_forward<float>(in, s, p, log_eps, strict, out);
  } else {
    run_forward<double>(in, s, p, log_eps, strict, out);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> meta_lstm_step(
    const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& loss, const at::Tensor& h,
    const at::Tensor& c, const at::Tensor& f_prev, const at::Tensor& i_prev, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f,
    const at::Tensor& b_f, const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps,
    bool strict) {
  const MetaLSTMOutputs out = forward_call(
      "meta_lstm_step", {theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i},
      p, log_eps, strict, /*over_state=*/false);
  return {out.theta_new, out.h_new, out.c_new, out.f, out.i};
}

at::Tensor meta_lstm_step_inplace(
    const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& loss, const at::Tensor& h,
    const at::Tensor& c, const at::Tensor& f_prev, const at::Tensor& i_prev, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f,
    const at::Tensor& b_f, const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps,
    bool strict) {
  return forward_call(
      "meta_lstm_step_inplace", {theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i},
      p, log_eps, strict, /*over_state=*/true).theta_new;
}

// One kernel run per task segment, each writing its row of out.flat; `partials` is sized for one
// segment and reused.
template <typename S>
void run_backward(const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& in,
                  const MetaLSTMShape& s, double p, double log_eps, bool strict,
                  MetaLSTMBackwardOutputs& out, at::Tensor& partials) {
  const std::vector<at::Tensor>& d = out.per_coord;
  const MetaLSTMKernels k = kernels();
  for (int64_t b = 0; b < s.tasks; ++b) {
    ParamsHolder<S> holder(in, s, b, p, log_eps, strict);
    const int64_t v = meta_lstm_segment_offset(s, b), st = meta_lstm_segment_state_offset(s, b);
    MetaLSTMBackwardArgs<S> a{g[0].data_ptr<S>() + v, g[1].data_ptr<S>() + st,
                              g[2].data_ptr<S>() + st, g[3].data_ptr<S>() + v,
                              g[4].data_ptr<S>() + v,
                              in[0].data_ptr<S>() + v, in[1].data_ptr<S>() + v,
                              in[3].data_ptr<S>() + st, in[4].data_ptr<S>() + st,
                              in[5].data_ptr<S>() + v, in[6].data_ptr<S>() + v,
                              d[0].data_ptr<S>() + v, d[1].data_ptr<S>() + v,
                              d[2].data_ptr<S>() + st, d[3].data_ptr<S>() + st,
                              d[4].data_ptr<S>() + v, d[5].data_ptr<S>() + v,
                              out.flat[b].data_ptr<S>(), partials.data_ptr<double>(), holder.loss,
                              s.segment(), static_cast<int>(s.input_size), holder.params};
    if constexpr (std::is_same_v<S, float>) k.backward_f32(a);
    else k.backward_f64(a);
  }
}

MetaLSTMInputGrads meta_lstm_step_backward(
    const at::Tensor& g_theta_new, const at::Tensor& g_h_new, const at::Tensor& g_c_new,
    const at::Tensor& g_f, const at::Tensor& g_i, const at::Tensor& theta, const at::Tensor& grad,
    const at::Tensor& loss, const at::Tensor& h, const at::Tensor& c, const at::Tensor& f_prev,
    const at::Tensor& i_prev, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_f, const at::Tensor& b_f,
    const at::Tensor& w_i, const at::Tensor& b_i, double p, double log_eps, bool strict) {
  const char* op = "meta_lstm_step_backward";
  const std::vector<at::Tensor> raw = {theta, grad, loss, h, c, f_prev, i_prev, w_ih,
                                       w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i};
  const MetaLSTMShape s = check_meta_lstm_inputs(op, raw, p, log_eps);
  const std::vector<at::Tensor> raw_g = {g_theta_new, g_h_new, g_c_new, g_f, g_i};
  check_meta_lstm_output_grads(op, raw_g, raw);
  const std::vector<at::Tensor> in = contiguous_all(raw), g = contiguous_all(raw_g);
  MetaLSTMBackwardOutputs out(in, s);
  const int64_t packed = s.input_size == 4 ? meta_lstm_packed_layout<4>(s.hidden).size
                                           : meta_lstm_packed_layout<1>(s.hidden).size;
  at::Tensor partials = at::empty({num_chunks(s.segment(), meta_lstm_backward_chunk(s.segment())) * packed},
                                  in[0].options().dtype(at::kDouble));
  if (theta.scalar_type() == at::kFloat) {
    run_backward<float>(g, in, s, p, log_eps, strict, out, partials);
  } else {
    run_backward<double>(g, in, s, p, log_eps, strict, out, partials);
  }
  return assemble_meta_lstm_input_grads(out.per_coord, out.flat, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CPU, m) {
  m.impl("meta_lstm_step", &meta_lstm_step);
  m.impl("meta_lstm_step_inplace", &meta_lstm_step_inplace);
  m.impl("meta_lstm_step_backward", &meta_lstm_step_backward);
}

}  // namespace cpu
}  // namespace lo
