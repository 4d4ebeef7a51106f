"""The CUDA emulation itself (tests/cuda_emulation): the source rewrite, the emulated device's
checks (barriers, launch limits, shared memory, alignment, fiber stacks), the routing of the fused
ops to the emulated kernels, the build cache, and CI's refusal to skip it. The kernels' results are
tested in the op test files, on the "emulated" device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnedopt import ops
from tests import cuda_emulation
from tests.cuda_emulation import build, rewrite
from tests.cuda_emulation.rewrite import RewriteError

REPO = Path(__file__).resolve().parents[1]


def needs_emulation():
    reason = cuda_emulation.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return cuda_emulation.emulator()


# -- the rewrite -----------------------------------------------------------------------------------

def body(text: str) -> str:
    return rewrite.rewrite_kernel_source(text, "k.cu", prologue=False).split("\n", 1)[1]


def test_launches_become_calls_with_every_configuration_part():
    src = ("f<S><<<grid_size(n, 256), 256, 0, stream>>>(x, out, n);\n"
           "k<<<b, t>>>(a);\n"
           "ns::g<D, S><<<static_cast<unsigned>(blocks), threads, smem>>>();\n")
    assert body(src) == (
        "::lo_emu::launch_kernel(__FILE__, __LINE__, f<S>, grid_size(n, 256), 256, 0, stream, x, out, n);\n"
        "::lo_emu::launch_kernel(__FILE__, __LINE__, k, b, t, 0, nullptr, a);\n"
        "::lo_emu::launch_kernel(__FILE__, __LINE__, ns::g<D, S>, static_cast<unsigned>(blocks), threads, smem, nullptr);\n")


def test_a_launch_over_several_lines_keeps_the_line_numbers():
    src = "k<<<b,\n  t, 0, s>>>(x,\n  y);\nint after = __LINE__;\n"
    out = body(src)
    assert out.count("\n") == src.count("\n")
    assert out.splitlines()[3] == "int after = __LINE__;"


def test_comments_and_strings_are_not_rewritten():
    src = ('// launches k<<<b, t>>>(x) with extern __shared__ int s[];\n'
           'const char* m = "k<<<1, 1>>>()";  /* __launch_bounds__(4) */\n')
    assert body(src) == src


def test_extern_shared_becomes_the_emulated_block_memory():
    assert body("extern __shared__ __align__(16) unsigned char smem[];") == (
        "unsigned char* const smem = ::lo_emu::dynamic_shared<unsigned char>(16);")
    assert body("extern __shared__ double tile[ ];") == "double* const tile = ::lo_emu::dynamic_shared<double>(16);"


def test_static_shared_memory_is_refused():
    with pytest.raises(RewriteError, match="k.cu:2: a static __shared__"):
        body("__global__ void f() {\n  __shared__ float s[32];\n}")


def test_launch_bounds_open_the_kernel_body():
    src = "__global__ void __launch_bounds__(kT<kH>, 2)\n    f(A<S> a, int n) {\n  g();\n}"
    assert body(src) == "__global__ void \n    f(A<S> a, int n) { LO_EMU_LAUNCH_BOUNDS(kT<kH>, 2);\n  g();\n}"
    with pytest.raises(RewriteError, match="without a body"):
        body("__global__ void __launch_bounds__(128) f(int n);")


def test_a_malformed_launch_is_refused():
    with pytest.raises(RewriteError, match="2 to 4 parts"):
        body("k<<<b>>>(x);")
    with pytest.raises(RewriteError, match="without >>>"):
        body("k<<<b, t(x);")


def test_glue_rules_must_match_as_often_as_stated():
    glue = "TORCH_LIBRARY_IMPL(learnedopt, CUDA, m) {\n  m.impl(\"f\", &f);\n}\n"
    assert "TORCH_LIBRARY_IMPL(learnedopt_emulated, CPU, m)" in rewrite.rewrite_glue_source(glue, "g.cpp")
    with pytest.raises(RewriteError, match="g.cpp: expected"):
        rewrite.rewrite_glue_source(glue.replace("CUDA", "CPU"), "g.cpp")
    with pytest.raises(RewriteError, match="1 time"):
        rewrite.rewrite_schema("TORCH_LIBRARY(learnedopt, m) {}\nTORCH_LIBRARY(learnedopt, m) {}", "s.cpp")
    tile = (build.hip_cpu_root() / "src/include/hip/detail/tile.hpp")
    if tile.is_file():
        assert "Fiber::make(LO_EMU_FIBER_STACK_BYTES," in rewrite.patch_fiber_stack(tile.read_text(), "tile.hpp")


def test_every_cuda_source_rewrites():
    for path in sorted((REPO / "csrc" / "cuda").glob("*.cu")):
        out = rewrite.rewrite_kernel_source(path.read_text(), f"csrc/cuda/{path.name}")
        assert "launch_kernel" in out or path.name == "errors.cu"
        assert out.count("\n") == path.read_text().count("\n") + 2  # prologue and #line only


# -- the emulated device ---------------------------------------------------------------------------

PROBES = {
    "neighbours": "ok",
    "unwritten_shared": "ok",
    "skipped_barrier": "thread 5 reached 0, thread 63 reached 1",
    "looped_barrier": "reached different numbers of __syncthreads()",
    "launch_bounds_met": "ok",
    "launch_bounds_exceeded": "a block of 256 threads exceeds the kernel's __launch_bounds__(128)",
    "block_1024": "ok",
    "block_1025": "cudaErrorInvalidConfiguration",
    "block_z_65": "cudaErrorInvalidConfiguration",
    "grid_zero": "cudaErrorInvalidConfiguration",
    "grid_y_65536": "cudaErrorInvalidConfiguration",
    "shared_48k": "ok",
    "shared_above_48k": "49156 bytes of dynamic shared memory; this kernel may use 49152",
    "shared_above_48k_opted_in": "ok",
    "shared_above_opt_in": "102404 bytes of dynamic shared memory; this kernel may use 102400",
    "opt_in_above_227k": "the device allows at most 232448 bytes",
    "aligned_float2": "ok",
    "misaligned_float2": "misaligned 8-byte load",
    "deep_stack": "ok",
    "attributes": "H100: sms=132 optin=232448 shared=49152 warp=32 threads=1024",
}
CODES = {"skipped_barrier": "cudaErrorLaunchFailure", "looped_barrier": "cudaErrorLaunchFailure",
         "launch_bounds_exceeded": "cudaErrorLaunchOutOfResources", "shared_above_48k": "cudaErrorInvalidValue",
         "shared_above_opt_in": "cudaErrorInvalidValue", "opt_in_above_227k": "cudaErrorInvalidValue",
         "misaligned_float2": "cudaErrorMisalignedAddress"}


def test_every_probe_is_checked():
    assert sorted(needs_emulation().emulator_probe_names()) == sorted(PROBES)


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_emulated_device(probe):
    """Each probe launches a kernel written to pass or to break one rule of a GPU (probes.cu)."""
    result = needs_emulation().emulator_probe(probe)
    expected = PROBES[probe]
    if expected == "ok":
        assert result == "ok"
    else:
        assert expected in result and CODES.get(probe, expected) in result, result


def test_a_failed_launch_leaves_no_thread_behind():
    """After a launch whose threads disagree on the barriers, every fiber is back at its start: the
    next launches on the same CPU threads compute right."""
    emu = needs_emulation()
    for _ in range(3):
        assert "different numbers" in emu.emulator_probe("looped_barrier")
        assert emu.emulator_probe("neighbours") == "ok"


def test_the_fused_ops_run_the_emulated_kernels_only_inside_the_context():
    needs_emulation()
    x = torch.randn(1000, dtype=torch.float64)
    before = cuda_emulation.launches()
    with cuda_emulation.emulated_kernels(), ops.use_backend("fused"):
        ops.preprocess(x.clone().requires_grad_()).sum().backward()
    inside = cuda_emulation.launches()
    assert inside[0] == before[0] + 2 and inside[1] == before[1]  # forward and backward kernels
    with ops.use_backend("fused"):
        ops.preprocess(x)
    assert cuda_emulation.launches() == inside  # the CPU kernel is back




def test_the_device_is_back_to_132_sms_after_emulating_a_smaller_one():
    emu = needs_emulation()
    with cuda_emulation.multiprocessors(1):
        assert "sms=1 " in emu.emulator_probe("attributes")
    assert "sms=132 " in emu.emulator_probe("attributes")


# -- other GPUs ------------------------------------------------------------------------------------

# The GPUs of the default build's architectures (sm_90, sm_80, sm_89; sm_86 has sm_89's 99 KiB).
TARGETED_GPUS = ("H100", "A100", "RTX 4090")


@pytest.mark.parametrize("gpu", TARGETED_GPUS)
def test_the_kernels_fit_every_gpu_the_build_targets(gpu):
    """The shapes that stage the most shared memory (LSTM hidden 20 and 64, TURTLE's paper, wide
    and 16-layer nets), float32 and float64, on each GPU's SM count and shared-memory limits."""
    from tests import test_meta_lstm_op as lstm
    from tests import test_turtle_op as turtle

    needs_emulation()
    with cuda_emulation.emulated_kernels(), cuda_emulation.device(gpu):
        for dtype in (torch.float32, torch.float64):
            for hidden in (20, 64):
                lstm.compare(lstm.make_inputs(70, hidden, 4, dtype, seed=hidden), dtype)
            for net in ("paper", "wide", "deep_wide"):
                turtle.check_against_reference(70, dtype, net, 2, 10.0, seed=5)


def test_a_launch_failure_is_reported_and_does_not_fail_the_next_op():
    """A T4's 64 KiB of opt-in shared memory is less than the float64 LSTM backward stages: the op
    fails with CUDA's error and the emulator's reason, and the next op, which fits, runs."""
    from tests import test_meta_lstm_op as lstm

    needs_emulation()
    with cuda_emulation.emulated_kernels(), cuda_emulation.device("T4"):
        inputs = lstm.make_inputs(50, 20, 4, torch.float64, seed=3)
        grads = lstm.output_grads(lstm.run("reference", inputs)[0])
        with pytest.raises(RuntimeError, match=r"meta_lstm_step_backward: CUDA kernel failed: invalid argument "
                                               r"\[CUDA emulation: cudaFuncSetAttribute"):
            lstm.run("fused", inputs, grads)
        lstm.compare(lstm.make_inputs(50, 20, 4, torch.float32, seed=3), torch.float32)


# -- the build -------------------------------------------------------------------------------------

def test_the_cache_key_follows_every_source(tmp_path):
    if not (build.hip_cpu_root() / "include").is_dir():
        pytest.skip(f"{cuda_emulation.SKIP_PREFIX}: HIP-CPU not found at {build.hip_cpu_root()}")
    copy = tmp_path / "csrc"
    shutil.copytree(REPO / "csrc", copy)
    assert build.source_hash(copy) == build.source_hash(REPO / "csrc")
    kernel = copy / "cuda" / "turtle_kernel.cu"
    kernel.write_text(kernel.read_text() + "\n")
    assert build.source_hash(copy) != build.source_hash(REPO / "csrc")


def test_an_up_to_date_build_is_found_without_compiling():
    needs_emulation()
    if os.environ.get(cuda_emulation.LIBRARY_VARIABLE):
        pytest.skip(f"{cuda_emulation.SKIP_PREFIX}: a prebuilt library was given")
    lib, built = build.build()
    assert lib.is_file() and not built


def run_pytest(test: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_missing_hip_cpu_skips_with_the_reason_and_fails_ci(tmp_path):
    test = "tests/test_cuda_emulation.py::test_every_probe_is_checked"
    missing = str(tmp_path / "no-hip-cpu")
    user = run_pytest(test, LEARNEDOPT_HIP_CPU=missing, LEARNEDOPT_NO_CPU_SKIPS="1",
                      **{cuda_emulation.REQUIRE_VARIABLE: "0"})
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout
    assert f"CUDA emulation unavailable: HIP-CPU not found at {missing}" in user.stdout
    ci = run_pytest(test, LEARNEDOPT_HIP_CPU=missing, **{cuda_emulation.REQUIRE_VARIABLE: "1"})
    assert ci.returncode != 0 and f"skipped under {cuda_emulation.REQUIRE_VARIABLE}=1" in ci.stdout, ci.stdout


def test_every_mutant_still_applies_to_the_sources():
    """The mutation check (tests/cuda_emulation/mutants.py) is only proof while each mutant's
    original text is still in csrc/ exactly once; an edit that moves it must move the mutant too."""
    from tests.cuda_emulation import mutants

    for mutant in mutants.MUTANTS:
        text = (REPO / "csrc" / mutant.file).read_text()
        assert text.count(mutant.original) == 1, (mutant.name, text.count(mutant.original))


def test_a_killed_builds_lock_does_not_hang_the_next_build(tmp_path):
    """torch's builder leaves its `lock` file behind when a build is killed, and the next build in
    that folder would wait for it forever; ours clears it under a flock that dies with its holder,
    and a second builder waits for the first (a non-blocking attempt from another process fails)."""
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "lock").touch()  # what a killed build leaves
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)")
    with build.exclusive_build(build_dir):
        assert not (build_dir / "lock").exists()
        held = subprocess.run([sys.executable, "-c", probe, str(build_dir / "build.flock")])
        assert held.returncode == 3
    free = subprocess.run([sys.executable, "-c", probe, str(build_dir / "build.flock")])
    assert free.returncode == 0


@pytest.mark.parametrize("returncode, stdout, outcome", [
    (0, "1 passed", "passed"),
    (1, "FAILED tests/x.py::test_a - assert 0\n1 failed", "failed"),
    (-6, "Fatal Python error: Aborted", "crashed"),   # a mutant corrupting memory: caught
    (4, "ERROR: file or directory not found", "error"),  # the tests never ran
])
def test_the_mutation_check_counts_a_crash_as_caught(monkeypatch, returncode, stdout, outcome):
    from tests.cuda_emulation import mutants

    monkeypatch.setattr(mutants.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], returncode, stdout=stdout, stderr=""))
    assert mutants.run_tests(Path("lib.so"), ["tests/x.py"])[0] == outcome
