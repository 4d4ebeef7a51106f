// Which SIMD code path the CPU kernels take. Each kernel is compiled once per capability
// (the *_baseline/_avx2/_avx512.cpp files) and picked at run time, so the build needs no
// -march=native and runs on any x86-64 (other architectures take the default path).
#pragma once

#include <cstdint>

namespace lo {
namespace cpu {

enum class Capability : int { kDefault = 0, kAVX2 = 1, kAVX512 = 2 };

// The best path this CPU supports, lowered by LEARNEDOPT_CPU_CAPABILITY=baseline|avx2|avx512
// (used by the tests to check every path against the reference).
Capability capability();
const char* capability_name(Capability c);

}  // namespace cpu
}  // namespace lo
