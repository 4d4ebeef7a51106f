#include <algorithm>
#include <cstdio>

#include "cuda/errors.h"

namespace lo {
namespace cuda {

static thread_local char g_message[256] = "no CUDA error recorded";

void record_error(cudaError_t error) {
  std::snprintf(g_message, sizeof(g_message), "%s (%s)", cudaGetErrorString(error),
                cudaGetErrorName(error));
}

const char* last_error_message() { return g_message; }

int64_t grid_size(int64_t n, int64_t per_block) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t needed = (n + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(sms) * 32));
}

}  // namespace cuda
}  // namespace lo
