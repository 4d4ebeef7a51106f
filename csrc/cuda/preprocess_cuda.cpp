// Torch glue of preprocess on CUDA: checks, device guard, current stream, dtype dispatch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda/glue.h"
#include "cuda/preprocess_kernel.h"

namespace lo {
namespace cuda {
namespace {

std::vector<int64_t> with_pair_dim(const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.push_back(2);
  return shape;
}

at::Tensor preprocess_cuda(const at::Tensor& x, double p, double log_eps, bool strict) {
  check_float("preprocess", "x", x);
  check_cuda("preprocess", "x", x);
  check_preprocess_options("preprocess", p, log_eps, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(with_pair_dim(x), x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Status status;
  if (x.scalar_type() == at::kFloat) {
    status = preprocess_forward<float>(xc.data_ptr<float>(), out.data_ptr<float>(), xc.numel(),
                                       PreprocessParams<float>::make(p, log_eps, strict), stream);
  } else {
    status = preprocess_forward<double>(xc.data_ptr<double>(), out.data_ptr<double>(), xc.numel(),
                                        PreprocessParams<double>::make(p, log_eps, strict), stream);
  }
  check_status(status, "preprocess");
  return out;
}

at::Tensor preprocess_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, double p,
                               double log_eps, bool strict) {
  check_float("preprocess_backward", "x", x);
  check_cuda("preprocess_backward", "x", x);
  check_same("preprocess_backward", "grad_out", grad_out, x);
  check_shape("preprocess_backward", "grad_out", grad_out, with_pair_dim(x));
  check_preprocess_options("preprocess_backward", p, log_eps, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  // The kernel reads grad_out as (x1, x2) pairs of 2 * sizeof(S) bytes, which must be aligned to
  // that size; a contiguous view at an odd element offset (say a narrow of autograd's gradient of
  // a torch.cat) is not, so it is copied.
  at::Tensor gc = grad_out.contiguous();
  if (reinterpret_cast<std::uintptr_t>(gc.data_ptr()) % (2 * gc.element_size()) != 0) gc = gc.clone();
  at::Tensor grad_x = at::empty_like(xc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Status status;
  if (x.scalar_type() == at::kFloat) {
    status = preprocess_backward<float>(gc.data_ptr<float>(), xc.data_ptr<float>(),
                                        grad_x.data_ptr<float>(), xc.numel(),
                                        PreprocessParams<float>::make(p, log_eps, strict), stream);
  } else {
    status = preprocess_backward<double>(gc.data_ptr<double>(), xc.data_ptr<double>(),
                                         grad_x.data_ptr<double>(), xc.numel(),
                                         PreprocessParams<double>::make(p, log_eps, strict), stream);
  }
  check_status(status, "preprocess_backward");
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {
  m.impl("preprocess", &preprocess_cuda);
  m.impl("preprocess_backward", &preprocess_backward_cuda);
}

}  // namespace cuda
}  // namespace lo
