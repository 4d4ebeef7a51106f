"""Builds learnedopt._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

Environment:
  LEARNEDOPT_CUDA=0|1     force the CUDA kernels off, or on (1 fails loudly when it cannot build them)
  TORCH_CUDA_ARCH_LIST    GPU architectures, honoured as torch does; when unset and no GPU is
                          visible, DEFAULT_ARCHS below (Ampere, Ada, Hopper, plus PTX for newer)
  MAX_JOBS                parallel compile jobs (torch's ninja build honours it)
  LEARNEDOPT_DEBUG=1      -O0 -g, for debugging the kernels
"""

import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

DEFAULT_ARCHS = "8.0;8.6;8.9;9.0+PTX"
HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    setting = os.environ.get("LEARNEDOPT_CUDA", "").strip()
    torch_has_cuda = torch.version.cuda is not None
    toolkit = CUDA_HOME is not None
    if setting == "0":
        return False
    if setting == "1":
        if not torch_has_cuda:
            raise RuntimeError("LEARNEDOPT_CUDA=1 but this torch is a CPU-only build "
                               f"({torch.__version__}); install a CUDA build of torch")
        if not toolkit:
            raise RuntimeError("LEARNEDOPT_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    if setting:
        raise RuntimeError(f"LEARNEDOPT_CUDA={setting!r}: expected 0 or 1")
    return torch_has_cuda and toolkit


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def extension():
    debug = os.environ.get("LEARNEDOPT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: the CPU kernels split coordinates over threads with OpenMP, the runtime torch uses.
    # No -march=native and no fast-math: SIMD code paths are chosen at run time (csrc/cpu/capability.h).
    # -ffp-contract=fast (GCC's default outside ISO mode, which -std=c++20 turns off) lets a*b+c
    # become one FMA on the AVX2/AVX-512 paths; it changes no result beyond rounding.
    cxx = opt + ["-std=c++20", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
    include_dirs = [os.path.join(HERE, "csrc")]
    # The headers too, so that a changed header rebuilds the extension (setuptools compares times).
    depends = sources("csrc/*/*.h")
    cpp = sources("csrc/*.cpp") + sources("csrc/autograd/*.cpp") + sources("csrc/cpu/*.cpp")
    if want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
        nvcc = opt + ["-std=c++20", "-lineinfo"]
        return CUDAExtension(
            "learnedopt._C", cpp + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
            include_dirs=include_dirs, depends=depends,
            define_macros=[("LEARNEDOPT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"])
    return CppExtension("learnedopt._C", cpp, include_dirs=include_dirs, depends=depends,
                        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


class BuildInTree(BuildExtension.with_options(use_ninja=True)):
    """Keeps the object files in build/temp, where ninja recompiles only what changed, also under
    `pip install -e .`, which would otherwise compile everything in a fresh temporary folder."""

    def finalize_options(self):
        if self.build_temp is None:
            self.build_temp = os.path.join(HERE, "build", "temp")
        super().finalize_options()


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildInTree})
