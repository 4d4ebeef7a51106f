#!/usr/bin/env bash
# Compile-checks the CUDA sources on a machine without a GPU (CI does this on every run):
#  1. every torch-free csrc/cuda/*.cu file is compiled with nvcc for sm_80 and sm_90;
#  2. the torch glue csrc/cuda/*.cpp is syntax-checked against the headers of a CUDA build of
#     torch, when TORCH_CUDA_INCLUDE points at one (scripts/fetch_cuda_torch_headers.sh makes it).
# The full CUDA extension is built and tested only on a GPU machine (bench/gpu_all.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda_sources: nvcc not found" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
status=0
for arch in sm_80 sm_90; do
  for f in csrc/cuda/*.cu; do
    if "$NVCC" -std=c++20 -O3 -Xcompiler -Wall -I csrc -arch="$arch" -c "$f" -o "$tmp/$(basename "$f").$arch.o"; then
      echo "nvcc $arch OK   $f"
    else
      echo "nvcc $arch FAIL $f"; status=1
    fi
  done
done
if [ -n "${TORCH_CUDA_INCLUDE:-}" ]; then
  cuda_inc=$(dirname "$(dirname "$(readlink -f "$(command -v "$NVCC")")")")/include
  [ -d /usr/local/cuda/include ] && cuda_inc=/usr/local/cuda/include
  py_inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  for f in csrc/cuda/*.cpp; do
    if g++ -std=c++20 -fsyntax-only -Wno-psabi -DLEARNEDOPT_WITH_CUDA -I csrc -I "$TORCH_CUDA_INCLUDE" \
        -I "$TORCH_CUDA_INCLUDE/torch/csrc/api/include" -I "$cuda_inc" -I "$py_inc" "$f"; then
      echo "g++ syntax OK   $f"
    else
      echo "g++ syntax FAIL $f"; status=1
    fi
  done
else
  echo "glue syntax check skipped: TORCH_CUDA_INCLUDE is not set"
fi
exit $status
