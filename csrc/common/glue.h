// Argument checks and input preparation shared by the torch glue of every op (CPU and CUDA). The Python wrappers in
// learnedopt/ops check first with friendlier messages; these keep a direct torch.ops call safe.
#pragma once

#include <ATen/ATen.h>

#include <vector>

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

// Contiguous versions of the inputs, as the kernels read them (no copy when they already are).
inline std::vector<at::Tensor> contiguous_all(at::TensorList in) {
  std::vector<at::Tensor> out;
  out.reserve(in.size());
  for (const at::Tensor& t : in) out.push_back(t.contiguous());
  return out;
}

}  // namespace lo
