// The emulator's own ops, next to the emulated learnedopt ops in the learnedopt_emulated namespace:
// counters and the SM count for the tests, and the probes of probes.cu.
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "probes.h"

namespace {

std::vector<int64_t> emulator_launches() {
  return {lo_emu::launches_completed(), lo_emu::launches_failed()};
}

int64_t emulator_set_multiprocessors(int64_t count) {
  TORCH_CHECK(count >= 1 && count <= 100000, "emulator_set_multiprocessors: count must lie in 1..100000, got ", count);
  return lo_emu::set_multiprocessors(static_cast<int>(count));
}

std::string emulator_set_device(c10::string_view name) {
  const std::string previous = lo_emu::set_device(std::string(name));
  if (previous.empty()) {
    int count = 0;
    const lo_emu::DeviceLimits* profiles = lo_emu::device_profiles(&count);
    std::string known;
    for (int k = 0; k < count; ++k) known += std::string(k ? ", " : "") + profiles[k].name;
    TORCH_CHECK(false, "emulator_set_device: unknown device '", name, "'; the emulator knows ", known);
  }
  return previous;
}

std::vector<std::string> emulator_probe_names() { return lo_emu::probe_names(); }

std::string emulator_probe(c10::string_view name) { return lo_emu::run_probe(std::string(name)); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(learnedopt_emulated, m) {
  m.def("emulator_launches() -> int[]", &emulator_launches);
  m.def("emulator_set_multiprocessors(int count) -> int", &emulator_set_multiprocessors);
  m.def("emulator_set_device(str name) -> str", &emulator_set_device);
  m.def("emulator_probe_names() -> str[]", &emulator_probe_names);
  m.def("emulator_probe(str name) -> str", &emulator_probe);
}
