// Torch-side pieces shared by the CPU and CUDA glue of meta_lstm_step: the argument checks (so a
// direct torch.ops call cannot crash a kernel), the allocation of what the kernels write, and the
// split of the concatenated weight gradients.
//
// Per-task losses: `loss` is 0-d (one loss for all n coordinates) or of shape (B,), B >= 1 dividing
// n, with task b owning the contiguous segment of coordinates [b*n/B, (b+1)*n/B) (a meta-batch's
// (B, n/B) parameters flattened row by row). The glue runs the kernels once per segment inside the
// one op call, each with its task's loss; the weight gradients are the sum of the segments' (in
// float64, segment order), the loss gradient has the loss's shape.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <array>
#include <tuple>
#include <vector>

#include "common/glue.h"
#include "common/meta_lstm_math.h"

namespace lo {

constexpr int kMetaLSTMInputs = 15;  // theta, grad, loss, h, c, f_prev, i_prev, w_ih, ..., b_i
inline constexpr const char* kMetaLSTMInputNames[kMetaLSTMInputs] = {
    "theta", "grad", "loss", "h", "c", "f_prev", "i_prev", "w_ih",
    "w_hh", "b_ih", "b_hh", "w_f", "b_f", "w_i", "b_i"};

struct MetaLSTMShape {
  int64_t n;
  int64_t hidden;
  int64_t input_size;  // 4: preprocessed [loss, grad]; 1: raw gradient
  int64_t tasks;       // B: 1 for a 0-d loss, else loss.size(0)
  bool per_task_loss;  // loss has shape (B,) rather than ()

  int64_t segment() const { return n / tasks; }  // coordinates per task
};

// Element offsets of task b's segment in a per-coordinate (n,) vector and in an (n, H) state.
inline int64_t meta_lstm_segment_offset(const MetaLSTMShape& s, int64_t b) { return b * s.segment(); }
inline int64_t meta_lstm_segment_state_offset(const MetaLSTMShape& s, int64_t b) {
  return b * s.segment() * s.hidden;
}

// The expected shape of every input, in schema order.
inline std::array<std::vector<int64_t>, kMetaLSTMInputs> meta_lstm_input_shapes(const MetaLSTMShape& s) {
  const int64_t n = s.n, H = s.hidden;
  const std::vector<int64_t> loss = s.per_task_loss ? std::vector<int64_t>{s.tasks} : std::vector<int64_t>{};
  return {{{n}, {n}, loss, {n, H}, {n, H}, {n}, {n}, {4 * H, s.input_size}, {4 * H, H}, {4 * H},
           {4 * H}, {H + 2}, {1}, {H + 2}, {1}}};
}

// The inputs (schema order) and the preprocessing options p and log_eps.
inline MetaLSTMShape check_meta_lstm_inputs(const char* op, at::TensorList in, double p, double log_eps) {
  TORCH_CHECK(in.size() == kMetaLSTMInputs, "learnedopt::", op, ": expected ", kMetaLSTMInputs,
              " tensor inputs, got ", in.size());
  const at::Tensor& theta = in[0];
  check_float(op, "theta", theta);
  for (int k = 1; k < kMetaLSTMInputs; ++k) check_same(op, kMetaLSTMInputNames[k], in[k], theta);
  TORCH_CHECK(theta.dim() == 1, "learnedopt::", op, ": theta must be 1-D (one entry per coordinate), "
              "got shape ", theta.sizes());
  const at::Tensor& h = in[3];
  TORCH_CHECK(h.dim() == 2 && h.size(0) == theta.size(0), "learnedopt::", op,
              ": h must have shape (n, hidden) with n = ", theta.size(0), ", got ", h.sizes());
  const int64_t hidden = h.size(1);
  TORCH_CHECK(hidden >= 1 && hidden <= kMetaLSTMMaxHidden, "learnedopt::", op, ": hidden size ",
              hidden, " is not supported (1..", kMetaLSTMMaxHidden, ")");
  const at::Tensor& w_ih = in[7];
  TORCH_CHECK(w_ih.dim() == 2 && (w_ih.size(1) == 4 || w_ih.size(1) == 1), "learnedopt::", op,
              ": w_ih must have shape (4*hidden, 4) or (4*hidden, 1), got ", w_ih.sizes());
  const at::Tensor& loss = in[2];
  TORCH_CHECK(loss.dim() <= 1, "learnedopt::", op, ": loss must be 0-d (one loss for all "
              "coordinates) or of shape (B,) (one loss per task), got shape ", loss.sizes());
  const bool per_task = loss.dim() == 1;
  const int64_t tasks = per_task ? loss.size(0) : 1;
  TORCH_CHECK(tasks >= 1, "learnedopt::", op, ": a per-task loss needs at least one task, got "
              "shape ", loss.sizes());
  TORCH_CHECK(theta.size(0) % tasks == 0, "learnedopt::", op, ": loss has shape ", loss.sizes(),
              " (B = ", tasks, " tasks) but n = ", theta.size(0), " coordinates do not split into ",
              tasks, " equal segments (task b owns coordinates [b*n/B, (b+1)*n/B))");
  const MetaLSTMShape s{theta.size(0), hidden, w_ih.size(1), tasks, per_task};
  const auto shapes = meta_lstm_input_shapes(s);
  for (int k = 0; k < kMetaLSTMInputs; ++k) check_shape(op, kMetaLSTMInputNames[k], in[k], shapes[k]);
  check_preprocess_options(op, p, log_eps, theta.scalar_type());
  return s;
}

// The gradients of the five outputs (theta_new, h_new, c_new, f, i) given to the backward.
inline void check_meta_lstm_output_grads(const char* op, at::TensorList grads, at::TensorList inputs) {
  const char* names[] = {"grad_theta_new", "grad_h_new", "grad_c_new", "grad_f", "grad_i"};
  const int like[] = {0, 3, 4, 0, 0};  // the input whose shape each output (and gradient) has
  TORCH_CHECK(grads.size() == 5, "learnedopt::", op, ": expected 5 output gradients");
  for (int k = 0; k < 5; ++k) {
    check_same(op, names[k], grads[k], inputs[0]);
    check_shape(op, names[k], grads[k], inputs[like[k]].sizes());
  }
}

// meta_lstm_step_inplace writes h_new, c_new, f and i over h, c, f_prev and i_prev (the inputs in
// schema order): each must be contiguous, as the kernels write it, and share no memory with any
// other input, which the kernels read while they write.
inline void check_meta_lstm_inplace_state(const char* op, at::TensorList in) {
  for (int k : {3, 4, 5, 6}) {
    const char* name = kMetaLSTMInputNames[k];
    TORCH_CHECK(in[k].is_contiguous(), "learnedopt::", op, ": ", name, " is updated in place and "
                "must be contiguous (got strides ", in[k].strides(), ")");
    TORCH_CHECK(at::has_internal_overlap(in[k]) != at::MemOverlap::Yes, "learnedopt::", op, ": ",
                name, " is updated in place, but some of its elements share memory");
    for (int j = 0; j < kMetaLSTMInputs; ++j) {
      TORCH_CHECK(j == k || at::get_overlap_status(in[k], in[j]) == at::MemOverlapStatus::No,
                  "learnedopt::", op, ": ", name, " is updated in place but shares memory with ",
                  kMetaLSTMInputNames[j]);
    }
  }
}

// The five outputs of meta_lstm_step for the contiguous inputs `in` (schema order).
struct MetaLSTMOutputs {
  at::Tensor theta_new, h_new, c_new, f, i;

  explicit MetaLSTMOutputs(const std::vector<at::Tensor>& in)
      : theta_new(at::empty_like(in[0])), h_new(at::empty_like(in[3])),
        c_new(at::empty_like(in[4])), f(at::empty_like(in[0])), i(at::empty_like(in[0])) {}

  // meta_lstm_step_inplace's: a fresh theta_new, the state written over itself. Safe with the
  // CPU kernels, which load each group of coordinates whole before they store it.
  struct OverState {};
  MetaLSTMOutputs(const std::vector<at::Tensor>& in, OverState)
      : theta_new(at::empty_like(in[0])), h_new(in[3]), c_new(in[4]), f(in[5]), i(in[6]) {}
};

// What the backward kernels write for the contiguous inputs `in`: the per-coordinate gradients
// (theta, grad, h, c, f_prev, i_prev) and, per task segment, the weight and loss gradients in one
// row of `flat` (B, count) (meta_lstm_weight_grad's order).
struct MetaLSTMBackwardOutputs {
  std::vector<at::Tensor> per_coord;
  at::Tensor flat;

  MetaLSTMBackwardOutputs(const std::vector<at::Tensor>& in, const MetaLSTMShape& s)
      : per_coord{at::empty_like(in[0]), at::empty_like(in[1]), at::empty_like(in[3]),
                  at::empty_like(in[4]), at::empty_like(in[5]), at::empty_like(in[6])},
        flat(at::empty({s.tasks, s.input_size == 4 ? meta_lstm_weight_grad_count<4>(s.hidden)
                                          : meta_lstm_weight_grad_count<1>(s.hidden)},
                       in[0].options())) {}
};

// The gradients of the 15 inputs, in schema order.
using MetaLSTMInputGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               at::Tensor>;

// `per_coord` holds the gradients of theta, grad, h, c, f_prev, i_prev; `flat` (B, count) each task
// segment's weight and loss gradients as the kernels write them (meta_lstm_weight_grad's order).
// Column 0 of every row is its task's loss gradient; the rest is summed over the segments (in
// float64, in segment order; one segment is taken as it is, so B = 1 is bitwise the 0-d call) and
// cut into separate tensors of the inputs' shapes (no two outputs may share storage).
inline MetaLSTMInputGrads assemble_meta_lstm_input_grads(const std::vector<at::Tensor>& per_coord,
                                                         const at::Tensor& flat, const MetaLSTMShape& s) {
  const auto shapes = meta_lstm_input_shapes(s);
  std::vector<at::Tensor> out;
  out.push_back(flat.select(1, 0).reshape(shapes[2]).clone());
  at::Tensor summed = s.tasks == 1 ? flat.select(0, 0)
                                   : flat.sum(0, /*keepdim=*/false, at::kDouble).to(flat.scalar_type());
  int64_t offset = 1;
  for (int k : {7, 8, 9, 10, 11, 12, 13, 14}) {
    int64_t numel = 1;
    for (int64_t d : shapes[k]) numel *= d;
    out.push_back(summed.narrow(0, offset, numel).reshape(shapes[k]).clone());
    offset += numel;
  }
  const std::vector<at::Tensor>& d = per_coord;
  const std::vector<at::Tensor>& w = out;
  return {d[0], d[1], w[0], d[2], d[3], d[4], d[5], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]};
}

}  // namespace lo
