// Torch-side helpers shared by the CUDA glue files (*_cuda.cpp): device checks and turning a
// launcher's status into an exception that names the op.
#pragma once

#include <ATen/ATen.h>

#include "common/glue.h"
#include "cuda/errors.h"

namespace lo {
namespace cuda {

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "learnedopt::", op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

inline void check_status(Status status, const char* op) {
  TORCH_CHECK(status == Status::kOk, "learnedopt::", op, ": CUDA kernel failed: ",
              status == Status::kLaunchFailed ? last_error_message() : "unsupported shape");
}

}  // namespace cuda
}  // namespace lo
