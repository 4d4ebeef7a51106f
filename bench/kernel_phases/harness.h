// What the per-phase drivers (meta_lstm.cpp, turtle.cpp) share: timing, the one-thread FMA probe
// and the JSON record. Each driver includes cpu/capability_variant.h first (bench/kernel_phases.py
// compiles it with -DLO_CAPABILITY=<cap>), then the kernel header whose phases it times, then this.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <omp.h>

#include "cpu/fma_peak.h"

#define LO_STRINGIFY2(x) #x
#define LO_STRINGIFY(x) LO_STRINGIFY2(x)

namespace lo {
namespace cpu {
namespace LO_CAPABILITY {
namespace phases {

// Keeps the compiler from hoisting a phase's loads or sinking its stores across loop trips.
inline void barrier() { asm volatile("" ::: "memory"); }

// Median seconds of one call of fn, repeated for about budget_s (at least 5 times) after one
// warm-up call.
inline double median_seconds(const std::function<void()>& fn, double budget_s) {
  using clock = std::chrono::steady_clock;
  fn();
  std::vector<double> times;
  const auto start = clock::now();
  do {
    const auto t0 = clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(clock::now() - t0).count());
  } while (std::chrono::duration<double>(clock::now() - start).count() < budget_s || times.size() < 5);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// FLOP per second of fma_peak.h's loop on this thread: the ceiling every fraction is taken of.
inline double probe_flop_per_s(double budget_s) {
  constexpr int W = sizeof(LO_VEC) / sizeof(float);
  const int64_t iterations = 2000000;
  volatile float sink = 0;
  const double s = median_seconds([&] { sink = fma_peak_run(iterations, 0.5f, 0.5f, 0.25f); }, budget_s);
  (void)sink;
  return 2.0 * W * kFmaPeakChains * iterations / s;
}

struct Phase {
  std::string name, pass;  // pass: the kernel ("forward" or "backward") whose time it is part of
  double seconds;
};

struct Record {
  std::string op;
  int64_t n = 0;
  double probe = 0, forward_seconds = 0, backward_seconds = 0;
  bool phases_match_kernel = false;
  std::vector<Phase> phases;

  void time(const char* name, const char* pass, const std::function<void()>& fn, double budget_s) {
    phases.push_back({name, pass, median_seconds(fn, budget_s)});
  }

  // One JSON object on stdout; `checksum` folds in values the phases computed, so that no phase
  // can be optimised away as unused.
  void print(double checksum) const {
    std::printf("{\"op\": \"%s\", \"capability\": \"%s\", \"lanes\": %d, \"n\": %lld, \"threads\": 1, "
                "\"fma_probe_flop_per_s\": %.6g, \"forward_seconds\": %.6g, \"backward_seconds\": %.6g, "
                "\"phases_match_kernel\": %s, \"phases\": [",
                op.c_str(), LO_STRINGIFY(LO_CAPABILITY), static_cast<int>(sizeof(LO_VEC) / sizeof(float)),
                static_cast<long long>(n), probe, forward_seconds, backward_seconds,
                phases_match_kernel ? "true" : "false");
    for (size_t p = 0; p < phases.size(); ++p)
      std::printf("%s{\"name\": \"%s\", \"pass\": \"%s\", \"seconds\": %.6g}", p ? ", " : "",
                  phases[p].name.c_str(), phases[p].pass.c_str(), phases[p].seconds);
    std::printf("], \"checksum\": %.6g}\n", checksum);
  }
};

// A record for `op` over n coordinates, the probe taken; the driver runs on one thread from here
// on (phases and kernels alike, against the one-thread probe).
inline Record start_record(const char* op, int64_t n, double budget_s) {
  omp_set_num_threads(1);
  Record rec;
  rec.op = op;
  rec.n = n;
  rec.probe = probe_flop_per_s(budget_s);
  return rec;
}

// A phase over `groups` groups: body on each group's buffer in turn, cycling through the ring,
// with a barrier per group.
template <typename Ring, typename Body>
std::function<void()> over_groups(Ring& ring, int64_t groups, Body body) {
  return [&ring, groups, body] {
    for (int64_t j = 0; j < groups; ++j) {
      body(ring[j % static_cast<int64_t>(ring.size())]);
      barrier();
    }
  };
}

inline bool same_bits(const float* a, const float* b, int64_t count) {
  return std::memcmp(a, b, count * sizeof(float)) == 0;
}

}  // namespace phases
}  // namespace LO_CAPABILITY
}  // namespace cpu
}  // namespace lo

// The drivers' main: n and the budget from the command line, n checked against the lane count.
#define LO_PHASES_MAIN(run)                                                                       \
  int main(int argc, char** argv) {                                                               \
    const int64_t n = argc > 1 ? std::atoll(argv[1]) : 10000;                                     \
    const double budget = argc > 2 ? std::atof(argv[2]) : 0.5;                                    \
    constexpr int W = sizeof(LO_VEC) / sizeof(float);                                             \
    if (n < 2 * W || n % W != 0) {                                                                \
      std::fprintf(stderr, "n = %lld: expected a multiple of %d lanes, at least %d\n",            \
                   static_cast<long long>(n), W, 2 * W);                                          \
      return 2;                                                                                   \
    }                                                                                             \
    return run(n, budget);                                                                        \
  }
