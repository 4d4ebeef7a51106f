#include "cpu/capability.h"

#include <cstdlib>
#include <cstring>

namespace lo {
namespace cpu {

static Capability detected() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
    return Capability::kAVX512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAVX2;
#endif
  return Capability::kDefault;
}

Capability capability() {
  static const Capability best = detected();
  Capability want = best;
  if (const char* env = std::getenv("LEARNEDOPT_CPU_CAPABILITY")) {
    if (std::strcmp(env, "baseline") == 0) want = Capability::kDefault;
    else if (std::strcmp(env, "avx2") == 0) want = Capability::kAVX2;
    else if (std::strcmp(env, "avx512") == 0) want = Capability::kAVX512;
  }
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAVX512: return "avx512";
    case Capability::kAVX2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace cpu
}  // namespace lo
