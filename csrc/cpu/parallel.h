// Splitting n coordinates over CPU threads.
//
// Kernels without a reduction (every forward, preprocess's backward) split n evenly over the
// threads (for_each_range): a small n still uses every core. Kernels that sum weight gradients
// over coordinates split n into reduction chunks whose boundaries depend on n alone, never on the
// thread count, so per-chunk partial sums and their in-order reduction give bitwise-identical
// results on every run and thread count (reduction_chunk, for_each_chunk).
#pragma once

#include <cstdint>

#include <omp.h>

namespace lo {
namespace cpu {

// Piece boundaries are multiples of this many coordinates, so only the last piece has a partial
// SIMD vector and pieces do not share cache lines of the per-coordinate arrays.
constexpr int64_t kPieceAlign = 64;
// Reduction chunks are multiples of this (a 64-byte line of floats): finer than kPieceAlign so that
// n / 8 rounds up to chunks that split evenly over 2 or 4 threads at a few thousand coordinates.
constexpr int64_t kReductionAlign = 16;

inline int64_t num_chunks(int64_t n, int64_t chunk) { return n == 0 ? 0 : (n + chunk - 1) / chunk; }

inline int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// The reduction chunk for n coordinates: about n / 8 (so that even a few thousand coordinates keep
// two or four threads busy), clamped to [min_chunk, max_chunk]; a function of n alone.
inline int64_t reduction_chunk(int64_t n, int64_t min_chunk, int64_t max_chunk) {
  const int64_t chunk = round_up((n + 7) / 8, kReductionAlign);
  return chunk < min_chunk ? min_chunk : (chunk > max_chunk ? max_chunk : chunk);
}

// fn(begin, end, chunk_index) for every chunk, in parallel when there is more than one. Chunks go
// round-robin to the threads: the last, shorter chunk does not leave one thread with all the
// short work.
template <typename Fn>
void for_each_chunk(int64_t n, int64_t chunk, const Fn& fn) {
  const int64_t chunks = num_chunks(n, chunk);
  if (chunks <= 1 || omp_in_parallel()) {
    for (int64_t k = 0; k < chunks; ++k) fn(k * chunk, k * chunk + chunk < n ? k * chunk + chunk : n, k);
    return;
  }
#pragma omp parallel for schedule(static, 1)
  for (int64_t k = 0; k < chunks; ++k) {
    fn(k * chunk, k * chunk + chunk < n ? k * chunk + chunk : n, k);
  }
}

// fn(begin, end) over one piece per thread, each of at least `grain` coordinates (less work than
// that costs more to hand to a thread than to do).
template <typename Fn>
void for_each_range(int64_t n, int64_t grain, const Fn& fn) {
  if (n <= 0) return;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  int64_t pieces = (n + grain - 1) / grain;
  if (pieces > threads) pieces = threads;
  if (pieces <= 1) return fn(int64_t{0}, n);
  for_each_chunk(n, round_up((n + pieces - 1) / pieces, kPieceAlign),
                 [&](int64_t begin, int64_t end, int64_t) { fn(begin, end); });
}

}  // namespace cpu
}  // namespace lo
