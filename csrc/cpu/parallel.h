// Splitting n coordinates over CPU threads in fixed-size chunks. Chunk boundaries depend on n and
// the chunk size only, never on the thread count, so per-chunk partial sums (the weight gradients)
// and their in-order reduction give bitwise-identical results on every run and thread count.
#pragma once

#include <cstdint>

#include <omp.h>

namespace lo {
namespace cpu {

inline int64_t num_chunks(int64_t n, int64_t chunk) { return n == 0 ? 0 : (n + chunk - 1) / chunk; }

// fn(begin, end, chunk_index) for every chunk, in parallel when there is more than one.
template <typename Fn>
void for_each_chunk(int64_t n, int64_t chunk, const Fn& fn) {
  const int64_t chunks = num_chunks(n, chunk);
  if (chunks <= 1 || omp_in_parallel()) {
    for (int64_t k = 0; k < chunks; ++k) fn(k * chunk, k * chunk + chunk < n ? k * chunk + chunk : n, k);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    fn(k * chunk, k * chunk + chunk < n ? k * chunk + chunk : n, k);
  }
}

}  // namespace cpu
}  // namespace lo
