// Torch-side helpers of turtle_step shared by the CPU and CUDA glue: the argument checks, the
// packing of the MLP's weights and biases into the one flat buffer (plus TurtleNet descriptor) the
// kernels take and the unpacking of its gradient, and the tensors of one call (TurtleForwardCall,
// TurtleBackwardCall) from which both glues fill the kernels' arguments.
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

struct PackedTurtleNet {
  at::Tensor params;  // contiguous, theta's dtype and device
  TurtleNet net;
};

// W_k then b_k for every layer; the t column of a 3-input first layer is folded into b_0.
inline PackedTurtleNet pack_turtle_net(at::TensorList weights, at::TensorList biases, int64_t t) {
  PackedTurtleNet packed;
  TurtleNet& net = packed.net;
  net.layers = static_cast<int>(weights.size());
  net.width[0] = 2;
  std::vector<at::Tensor> pieces;
  int64_t offset = 0;
  for (int k = 0; k < net.layers; ++k) {
    at::Tensor w = weights[k];
    at::Tensor b = biases[k];
    if (k == 0) {
      if (w.size(1) == 3) b = b + w.select(1, 2) * static_cast<double>(t);
      w = w.narrow(1, 0, 2);
    }
    const int64_t out = w.size(0), in = w.size(1);
    net.width[k + 1] = static_cast<int>(out);
    net.offset[k] = offset;
    offset += out * in + out;
    pieces.push_back(w.reshape({-1}));
    pieces.push_back(b.reshape({-1}));
  }
  net.num_params = offset;
  packed.params = at::cat(pieces).contiguous();
  return packed;
}

// The packed gradient back to one tensor per weight and bias (no two outputs share storage).
inline std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> unpack_turtle_grads(
    const at::Tensor& d_params, const TurtleNet& net, at::TensorList weights, int64_t t) {
  std::vector<at::Tensor> d_weights, d_biases;
  for (int k = 0; k < net.layers; ++k) {
    const int64_t out = net.width[k + 1], in = net.width[k];
    at::Tensor d_w = d_params.narrow(0, net.offset[k], out * in).view({out, in});
    at::Tensor d_b = d_params.narrow(0, net.offset[k] + out * in, out).clone();
    if (k == 0 && weights[0].size(1) == 3) {
      // d/dW0[:, 2] of W0[:, 2] * t summed over coordinates: t * d b0.
      d_w = at::cat({d_w, (d_b * static_cast<double>(t)).unsqueeze(1)}, 1);
    } else {
      d_w = d_w.clone();
    }
    d_weights.push_back(d_w);
    d_biases.push_back(d_b);
  }
  return {std::move(d_weights), std::move(d_biases)};
}

// One turtle_step call as the kernels take it: contiguous inputs, the packed MLP, fresh outputs.
struct TurtleForwardCall {
  at::Tensor theta, grad, m, alpha;
  PackedTurtleNet packed;
  at::Tensor theta_new, m_new;

  TurtleForwardCall(const at::Tensor& theta_in, const at::Tensor& grad_in, const at::Tensor& m_in,
                    int64_t t, const at::Tensor& alpha_in, at::TensorList weights,
                    at::TensorList biases)
      : theta(theta_in.contiguous()), grad(grad_in.contiguous()), m(m_in.contiguous()),
        alpha(alpha_in.contiguous()), packed(pack_turtle_net(weights, biases, t)),
        theta_new(at::empty_like(theta)), m_new(at::empty_like(theta)) {}

  template <typename S>
  TurtleForwardArgs<S> args() const {
    return {theta.data_ptr<S>(),     grad.data_ptr<S>(),      m.data_ptr<S>(),
            alpha.data_ptr<S>(),     packed.params.data_ptr<S>(), theta_new.data_ptr<S>(),
            m_new.data_ptr<S>(),     theta.numel()};
  }
};

using TurtleInputGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    std::vector<at::Tensor>, std::vector<at::Tensor>>;

// One turtle_step_backward call as the kernels take it (theta itself is not needed: the update is
// linear in it).
struct TurtleBackwardCall {
  at::Tensor d_theta_new, d_m_new, grad, m, alpha;
  PackedTurtleNet packed;
  at::Tensor d_theta, d_grad, d_m, d_alpha, d_params;

  TurtleBackwardCall(const at::Tensor& d_theta_new_in, const at::Tensor& d_m_new_in,
                     const at::Tensor& grad_in, const at::Tensor& m_in, int64_t t,
                     const at::Tensor& alpha_in, at::TensorList weights, at::TensorList biases)
      : d_theta_new(d_theta_new_in.contiguous()), d_m_new(d_m_new_in.contiguous()),
        grad(grad_in.contiguous()), m(m_in.contiguous()), alpha(alpha_in.contiguous()),
        packed(pack_turtle_net(weights, biases, t)), d_theta(at::empty_like(grad)),
        d_grad(at::empty_like(grad)), d_m(at::empty_like(grad)), d_alpha(at::empty_like(grad)),
        d_params(at::empty_like(packed.params)) {}

  template <typename S>
  TurtleBackwardArgs<S> args() const {
    return {d_theta_new.data_ptr<S>(), d_m_new.data_ptr<S>(), grad.data_ptr<S>(),
            m.data_ptr<S>(),           alpha.data_ptr<S>(),   packed.params.data_ptr<S>(),
            d_theta.data_ptr<S>(),     d_grad.data_ptr<S>(),  d_m.data_ptr<S>(),
            d_alpha.data_ptr<S>(),     d_params.data_ptr<S>(), grad.numel()};
  }

  // The gradients of the op's tensor inputs in schema order, the weights' cut out of d_params.
  TurtleInputGrads result(at::TensorList weights, int64_t t) const {
    auto [d_weights, d_biases] = unpack_turtle_grads(d_params, packed.net, weights, t);
    return {d_theta, d_grad, d_m, d_alpha, std::move(d_weights), std::move(d_biases)};
  }
};

}  // namespace lo
