#!/usr/bin/env bash
# Build clipscope with the `cuda` feature on a machine with no GPU and no system CUDA
# toolkit: NVIDIA's PyPI wheels carry nvcc, cicc, the CUDA headers, libcu++ (CCCL) and
# libcudart, which is all candle's kernels need at build time. Of CUDA's libraries only
# the runtime is linked (candle-kernels' MoE library asks for it), and statically: the
# vendored candle-core has cudarc load the driver, cuBLAS, cuBLASLt, cuRAND and NVRTC
# when the program runs (vendor/candle-core/CLIPSCOPE.md), so the binary starts on any
# Linux machine, CUDA or not, and `--device auto` falls back to the CPU where they are
# missing.
#
#   deploy/cuda-build.sh                 # binary in target/cuda/release/clipscope
#   CUDA_COMPUTE_CAP=80 deploy/cuda-build.sh   # for A100s (default 90: H100/H200)
#   CUDA_WHEEL_VERSION=13.0.88 CCCL_WHEEL_VERSION=13.0.85 deploy/cuda-build.sh
#                                        # for a driver of CUDA 13.0 (580): candle's
#                                        # kernels are PTX, refused by older drivers
#
# The wheels go to target/cuda-toolkit (about 300 MB, once). Pinned to CUDA 13.4, the
# newest that cudarc 0.19 (candle 0.11's) knows.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# Absolute: cargo runs build scripts (cudarc's asks nvcc its version) in other folders.
toolkit=$(realpath -m "${CUDA_WHEELS:-$root/target/cuda-toolkit}")
version=${CUDA_WHEEL_VERSION:-13.4.92}
cccl=${CCCL_WHEEL_VERSION:-13.3.5.0.6} # cuda_fp16.h includes CCCL's <nv/target>
cuda=$toolkit/nvidia/cu13

if [ ! -x "$cuda/bin/nvcc" ] || [ ! -e "$cuda/include/nv/target" ] ||
    ! "$cuda/bin/nvcc" --version | grep -q "V$version"; then
    # One install into an empty folder: pip --target does not merge into an existing one.
    rm -rf "$toolkit"
    python3 -m pip install --quiet --disable-pip-version-check --target "$toolkit" \
        "nvidia-cuda-nvcc==$version" "nvidia-cuda-crt==$version" "nvidia-nvvm==$version" \
        "nvidia-cuda-runtime==$version" "nvidia-cuda-cccl==$cccl"
fi
# candle-kernels links `-lcudart`; in a folder whose only libcudart is the wheel's static
# archive, the linker takes that. (Run from the wheel's folder, it would find the
# shared library, and the binary would not start without it.)
link=$root/target/cuda/link
mkdir -p "$link"
ln -sf "$cuda/lib/libcudart_static.a" "$link/libcudart.a"
rm -f "$cuda/lib/libcudart.so"

export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PATH=$cuda/bin:$cuda/nvvm/bin:$PATH
export LIBRARY_PATH=$link${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# No GPU to ask: say which architecture to compile the kernels for.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

nvcc --version | tail -n 2
cd "$root"
build() { cargo build --release --locked --features cuda --target-dir "$root/target/cuda" "$@"; }
# candle-kernels' build script compiles its PTX once and does not look at nvcc again: a
# binary built after switching toolkits would still carry the old PTX (whose version a
# driver older than that toolkit refuses), so its build starts over when nvcc changes.
stamp=$root/target/cuda/nvcc-version
if [ -e "$stamp" ] && [ "$(cat "$stamp")" != "$version" ]; then
    cargo clean --release --target-dir "$root/target/cuda" -p candle-kernels
fi
mkdir -p "$root/target/cuda"
echo "$version" >"$stamp"

# Cargo does not relink when only the link folder changed: a binary from before the
# static runtime would stay.
rm -f "$root/target/cuda/release/clipscope"
build "$@"
echo "built: $root/target/cuda/release/clipscope (CUDA $version, sm_$CUDA_COMPUTE_CAP)"
