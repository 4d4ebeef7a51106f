// Torch glue of preprocess on the CPU: argument checks, output allocation, dtype and SIMD dispatch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/preprocess_math.h"
#include "cpu/capability.h"
#include "cpu/preprocess_kernel.h"
#include "common/glue.h"

namespace lo {
namespace cpu {
namespace {

PreprocessKernels kernels() {
  switch (capability()) {
    case Capability::kAVX512: return preprocess_kernels_avx512();
    case Capability::kAVX2: return preprocess_kernels_avx2();
    default: return preprocess_kernels_baseline();
  }
}

at::Tensor preprocess_cpu(const at::Tensor& x, double p, double log_eps, bool strict) {
  check_float("preprocess", "x", x);
  check_preprocess_options("preprocess", p, log_eps, x.scalar_type());
  const at::Tensor xc = x.contiguous();
  auto out_shape = x.sizes().vec();
  out_shape.push_back(2);
  at::Tensor out = at::empty(out_shape, x.options());
  const PreprocessKernels k = kernels();
  if (x.scalar_type() == at::kFloat) {
    k.forward_f32(xc.data_ptr<float>(), out.data_ptr<float>(), xc.numel(),
                  PreprocessParams<float>::make(p, log_eps, strict));
  } else {
    k.forward_f64(xc.data_ptr<double>(), out.data_ptr<double>(), xc.numel(),
                  PreprocessParams<double>::make(p, log_eps, strict));
  }
  return out;
}

at::Tensor preprocess_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, double p,
                               double log_eps, bool strict) {
  check_float("preprocess_backward", "x", x);
  check_same("preprocess_backward", "grad_out", grad_out, x);
  check_preprocess_options("preprocess_backward", p, log_eps, x.scalar_type());
  auto out_shape = x.sizes().vec();
  out_shape.push_back(2);
  TORCH_CHECK(grad_out.sizes().vec() == out_shape, "learnedopt::preprocess_backward: grad_out has shape ",
              grad_out.sizes(), ", expected ", at::IntArrayRef(out_shape));
  const at::Tensor xc = x.contiguous(), gc = grad_out.contiguous();
  at::Tensor grad_x = at::empty_like(xc);
  const PreprocessKernels k = kernels();
  if (x.scalar_type() == at::kFloat) {
    k.backward_f32(gc.data_ptr<float>(), xc.data_ptr<float>(), grad_x.data_ptr<float>(),
                   xc.numel(), PreprocessParams<float>::make(p, log_eps, strict));
  } else {
    k.backward_f64(gc.data_ptr<double>(), xc.data_ptr<double>(), grad_x.data_ptr<double>(),
                   xc.numel(), PreprocessParams<double>::make(p, log_eps, strict));
  }
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CPU, m) {
  m.impl("preprocess", &preprocess_cpu);
  m.impl("preprocess_backward", &preprocess_backward_cpu);
}

}  // namespace cpu
}  // namespace lo
