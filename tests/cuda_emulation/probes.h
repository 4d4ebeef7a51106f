// Launches that exercise the emulator itself (probes.cu): the barrier checker, the device limits,
// shared memory, alignment and the fiber stacks, each against a kernel written to pass or to fail.
#pragma once

#include <string>
#include <vector>

namespace lo_emu {

// The probes' names, and one probe's outcome: "ok", or the launch's error as the torch glue
// reports it ("<cudaGetErrorString> (<cudaGetErrorName>)"), or what the probe found wrong.
std::vector<std::string> probe_names();
std::string run_probe(const std::string& name);

}  // namespace lo_emu
