// Argument checks and input preparation shared by the torch glue of every op (CPU and CUDA). The Python wrappers in
// learnedopt/ops check first with friendlier messages; these keep a direct torch.ops call safe.
#pragma once

#include <ATen/ATen.h>

#include <iomanip>
#include <sstream>
#include <vector>

#include "common/preprocess_math.h"

namespace lo {

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "learnedopt::", op,
              ": ", name, " has dtype ", t.scalar_type(),
              "; the kernels compute in float32 or float64 only (cast half/bfloat16 with .float())");
  TORCH_CHECK(t.layout() == at::kStrided, "learnedopt::", op, ": ", name, " must be a dense tensor");
}

// `t` must share `like`'s dtype and device.
inline void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), "learnedopt::", op, ": ", name, " is on ", t.device(),
              " but the other inputs are on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "learnedopt::", op, ": ", name, " has dtype ",
              t.scalar_type(), " but the other inputs have ", like.scalar_type());
  TORCH_CHECK(t.layout() == at::kStrided, "learnedopt::", op, ": ", name, " must be a dense tensor");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "learnedopt::", op, ": ", name, " has shape ", t.sizes(),
              ", expected ", shape);
}

// p and log_eps within PreprocessLimits for the inputs' dtype (float32 or float64, checked
// before), with the messages of learnedopt/ops/_checks.py. NaN fails every comparison.
inline void check_preprocess_options(const char* op, double p, double log_eps, at::ScalarType dtype) {
  const bool single = dtype == at::kFloat;
  const double p_min = single ? PreprocessLimits<float>::p_min() : PreprocessLimits<double>::p_min();
  const double p_max = single ? PreprocessLimits<float>::p_max() : PreprocessLimits<double>::p_max();
  const char* type = single ? "float32" : "float64";
  auto exact = [](double v) {  // every digit, so that a value just past a bound reads as such
    std::ostringstream s;
    s << std::setprecision(17) << v;
    return s.str();
  };
  TORCH_CHECK(p >= p_min && p <= p_max, "learnedopt::", op, ": p must be in [", p_min, ", ", p_max,
              "] for ", type, " (e^p and e^-p normal numbers, log|x|/p finite for every finite x), got ",
              exact(p));
  TORCH_CHECK(log_eps >= 0.0 && log_eps <= kPreprocessLogEpsMax, "learnedopt::", op,
              ": log_eps must be in [0, ", kPreprocessLogEpsMax,
              "] (an epsilon inside log(|x| + log_eps)), got ", exact(log_eps));
}

// Contiguous versions of the inputs, as the kernels read them (no copy when they already are).
inline std::vector<at::Tensor> contiguous_all(at::TensorList in) {
  std::vector<at::Tensor> out;
  out.reserve(in.size());
  for (const at::Tensor& t : in) out.push_back(t.contiguous());
  return out;
}

}  // namespace lo
