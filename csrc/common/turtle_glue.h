// Torch-side helpers of turtle_step shared by the CPU and CUDA glue: the argument checks, the MLP's
// shape (TurtleNet) and the table of its weights' pointers and strides the kernels read them
// through, and the tensors of one call (TurtleForwardCall, TurtleBackwardCall) from which both
// glues fill the kernels' arguments.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/glue.h"
#include "common/turtle_math.h"

namespace lo {

// The checks of learnedopt/ops/turtle.py, repeated so that a direct torch.ops call cannot crash.
inline void check_turtle_args(const char* op, const at::Tensor& theta, const at::Tensor& grad,
                              const at::Tensor& m, int64_t t, const at::Tensor& alpha,
                              at::TensorList weights, at::TensorList biases, double beta,
                              double grad_clamp) {
  check_float(op, "theta", theta);
  TORCH_CHECK(theta.dim() == 1, "learnedopt::", op, ": theta must be 1-D (one entry per coordinate), got shape ",
              theta.sizes());
  const int64_t n = theta.size(0);
  check_same(op, "grad", grad, theta);
  check_shape(op, "grad", grad, {n});
  check_same(op, "m", m, theta);
  check_shape(op, "m", m, {n});
  check_same(op, "alpha", alpha, theta);
  check_shape(op, "alpha", alpha, {n});
  TORCH_CHECK(t >= 0, "learnedopt::", op, ": t must be a step index >= 0, got ", t);
  const int64_t layers = static_cast<int64_t>(weights.size());
  TORCH_CHECK(layers >= 1 && layers <= kTurtleMaxLayers && biases.size() == weights.size(),
              "learnedopt::", op, ": expected 1..", kTurtleMaxLayers,
              " layers with one bias each, got ", weights.size(), " weights and ", biases.size(),
              " biases");
  int64_t fan_in = -1;
  for (int64_t k = 0; k < layers; ++k) {
    const at::Tensor& w = weights[k];
    const at::Tensor& b = biases[k];
    const std::string w_name = "weights[" + std::to_string(k) + "]";
    const std::string b_name = "biases[" + std::to_string(k) + "]";
    check_same(op, w_name.c_str(), w, theta);
    TORCH_CHECK(w.dim() == 2, "learnedopt::", op, ": weights[", k, "] must be 2-D (out, in), got shape ",
                w.sizes());
    if (k == 0) {
      TORCH_CHECK(w.size(1) == 2 || w.size(1) == 3, "learnedopt::", op,
                  ": weights[0] must have 3 input columns for [g, m, t] or 2 for [g, m], got ",
                  w.size(1));
    } else {
      TORCH_CHECK(w.size(1) == fan_in, "learnedopt::", op, ": weights[", k, "] has ", w.size(1),
                  " inputs but the previous layer has ", fan_in, " outputs");
    }
    TORCH_CHECK(w.size(0) >= 1 && w.size(0) <= kTurtleMaxWidth, "learnedopt::", op, ": weights[", k,
                "] has ", w.size(0), " outputs; layer widths must lie in 1..", kTurtleMaxWidth);
    check_same(op, b_name.c_str(), b, theta);
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "learnedopt::", op, ": biases[", k,
                "] has shape ", b.sizes(), ", expected (", w.size(0), ")");
    fan_in = w.size(0);
  }
  TORCH_CHECK(fan_in == 1, "learnedopt::", op, ": the last layer must have 1 output, got ", fan_in);
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "learnedopt::", op, ": beta must lie in [0, 1], got ", beta);
  TORCH_CHECK(grad_clamp > 0.0, "learnedopt::", op,
              ": grad_clamp must be > 0 (inf for no clamp), got ", grad_clamp);
}

// The backward's extra inputs: the output gradients, shaped like theta.
inline void check_turtle_output_grads(const char* op, const at::Tensor& d_theta_new,
                                      const at::Tensor& d_m_new, const at::Tensor& theta) {
  check_same(op, "grad_theta_new", d_theta_new, theta);
  check_shape(op, "grad_theta_new", d_theta_new, theta.sizes());
  check_same(op, "grad_m_new", d_m_new, theta);
  check_shape(op, "grad_m_new", d_m_new, theta.sizes());
}

template <typename S>
TurtleStep<S> make_turtle_step(int64_t t, double beta, double grad_clamp) {
  return TurtleStep<S>::make(beta, grad_clamp, std::isfinite(grad_clamp), t == 0);
}

// The MLP's shape from the weights' sizes (no data is touched).
inline TurtleNet describe_turtle_net(at::TensorList weights) {
  TurtleNet net;
  net.layers = static_cast<int>(weights.size());
  net.width[0] = 2;  // the t column, if any, is folded into b_0 (common/turtle_math.h)
  int64_t offset = 0;
  for (int k = 0; k < net.layers; ++k) {
    net.width[k + 1] = static_cast<int>(weights[k].size(0));
    net.offset[k] = offset;
    offset += net.block_size(k);
  }
  net.num_params = offset;
  return net;
}

// The table of the weights' and biases' data pointers and strides: any strides, no copies.
template <typename S>
TurtleWeights<S> turtle_weight_table(at::TensorList weights, at::TensorList biases, int64_t t) {
  TurtleWeights<S> table{};
  for (size_t k = 0; k < weights.size(); ++k) {
    table.weight[k] = weights[k].const_data_ptr<S>();
    table.row_stride[k] = weights[k].stride(0);
    table.col_stride[k] = weights[k].stride(1);
    table.bias[k] = biases[k].const_data_ptr<S>();
    table.bias_stride[k] = biases[k].stride(0);
  }
  table.t_column = weights[0].size(1) == 3;
  table.t = static_cast<S>(t);
  return table;
}

// One turtle_step call as the kernels take it: contiguous per-coordinate inputs, the MLP's shape,
// fresh outputs. The weights stay where they are (turtle_weight_table).
struct TurtleForwardCall {
  at::Tensor theta, grad, m, alpha;
  at::TensorList weights, biases;
  int64_t t;
  TurtleNet net;
  at::Tensor theta_new, m_new;

  TurtleForwardCall(const at::Tensor& theta_in, const at::Tensor& grad_in, const at::Tensor& m_in,
                    int64_t t_in, const at::Tensor& alpha_in, at::TensorList weights_in,
                    at::TensorList biases_in)
      : theta(theta_in.contiguous()), grad(grad_in.contiguous()), m(m_in.contiguous()),
        alpha(alpha_in.contiguous()), weights(weights_in), biases(biases_in), t(t_in),
        net(describe_turtle_net(weights_in)), theta_new(at::empty_like(theta)),
        m_new(at::empty_like(theta)) {}

  template <typename S>
  TurtleForwardArgs<S> args() const {
    return {theta.data_ptr<S>(), grad.data_ptr<S>(), m.data_ptr<S>(), alpha.data_ptr<S>(),
            turtle_weight_table<S>(weights, biases, t), theta_new.data_ptr<S>(), m_new.data_ptr<S>(),
            theta.numel()};
  }
};

using TurtleInputGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    std::vector<at::Tensor>, std::vector<at::Tensor>>;

// One turtle_step_backward call as the kernels take it (theta itself is not needed: the update is
// linear in it). The kernels write each weight's and bias's gradient into its own fresh tensor.
struct TurtleBackwardCall {
  at::Tensor d_theta_new, d_m_new, grad, m, alpha;
  at::TensorList weights, biases;
  int64_t t;
  TurtleNet net;
  at::Tensor d_theta, d_grad, d_m, d_alpha;
  std::vector<at::Tensor> d_weights, d_biases;

  TurtleBackwardCall(const at::Tensor& d_theta_new_in, const at::Tensor& d_m_new_in,
                     const at::Tensor& grad_in, const at::Tensor& m_in, int64_t t_in,
                     const at::Tensor& alpha_in, at::TensorList weights_in,
                     at::TensorList biases_in)
      : d_theta_new(d_theta_new_in.contiguous()), d_m_new(d_m_new_in.contiguous()),
        grad(grad_in.contiguous()), m(m_in.contiguous()), alpha(alpha_in.contiguous()),
        weights(weights_in), biases(biases_in), t(t_in), net(describe_turtle_net(weights_in)),
        d_theta(at::empty_like(grad)), d_grad(at::empty_like(grad)), d_m(at::empty_like(grad)),
        d_alpha(at::empty_like(grad)) {
    for (size_t k = 0; k < weights.size(); ++k) {
      d_weights.push_back(at::empty(weights[k].sizes(), grad.options()));
      d_biases.push_back(at::empty(biases[k].sizes(), grad.options()));
    }
  }

  template <typename S>
  TurtleBackwardArgs<S> args() const {
    TurtleWeightGrads<S> d{};
    for (size_t k = 0; k < d_weights.size(); ++k) {
      d.weight[k] = d_weights[k].data_ptr<S>();
      d.bias[k] = d_biases[k].data_ptr<S>();
    }
    return {d_theta_new.data_ptr<S>(), d_m_new.data_ptr<S>(), grad.data_ptr<S>(),
            m.data_ptr<S>(),           alpha.data_ptr<S>(),   turtle_weight_table<S>(weights, biases, t),
            d_theta.data_ptr<S>(),     d_grad.data_ptr<S>(),  d_m.data_ptr<S>(),
            d_alpha.data_ptr<S>(),     d,                     grad.numel()};
  }

  // The gradients of the op's tensor inputs in schema order.
  TurtleInputGrads result() const { return {d_theta, d_grad, d_m, d_alpha, d_weights, d_biases}; }
};

}  // namespace lo
