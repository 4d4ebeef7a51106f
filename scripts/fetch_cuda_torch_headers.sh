#!/usr/bin/env bash
# Prints the include directory of a CUDA build of torch (same version as the installed one),
# downloading its wheel once into ${1:-.cache/torch-cuda} and unpacking only torch/include.
# Used to syntax-check the CUDA glue on machines whose torch is a CPU build.
set -euo pipefail
dest=${1:-.cache/torch-cuda}
version=$(python3 -c "import torch; print(torch.__version__.split('+')[0])")
pyver=$(python3 -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
if [ ! -d "$dest/torch/include/c10/cuda" ]; then
  mkdir -p "$dest"
  # --isolated: ignore local wheel folders that hold the CPU build under the same version.
  python3 -m pip download --isolated --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version "$pyver" "torch==$version" -d "$dest" >&2
  unzip -q -o "$dest"/torch-"$version"-*.whl 'torch/include/*' -d "$dest" >&2
  rm -f "$dest"/torch-"$version"-*.whl
fi
echo "$(cd "$dest" && pwd)/torch/include"
