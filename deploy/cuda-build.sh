#!/usr/bin/env bash
# Build clipscope with the `cuda` feature on a machine with no GPU and no system CUDA
# toolkit: NVIDIA's PyPI wheels carry nvcc, cicc, the CUDA headers, libcu++ (CCCL) and
# libcudart, which is all candle's kernels and cudarc need at build time (cudarc loads the driver and
# cuBLAS when the program runs, so a GPU machine needs only its driver and CUDA's
# libraries).
#
#   deploy/cuda-build.sh                 # binary in target/cuda/release/clipscope
#   CUDA_COMPUTE_CAP=80 deploy/cuda-build.sh   # for A100s (default 90: H100/H200)
#
# The wheels go to target/cuda-toolkit (about 300 MB, once). Pinned to CUDA 13.4, the
# newest that cudarc 0.19 (candle 0.11's) knows.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
toolkit=${CUDA_WHEELS:-$root/target/cuda-toolkit}
version=${CUDA_WHEEL_VERSION:-13.4.92}
cccl=${CCCL_WHEEL_VERSION:-13.3.5.0.6} # cuda_fp16.h includes CCCL's <nv/target>
cuda=$toolkit/nvidia/cu13

if [ ! -x "$cuda/bin/nvcc" ] || [ ! -e "$cuda/include/nv/target" ]; then
    # One install into an empty folder: pip --target does not merge into an existing one.
    rm -rf "$toolkit"
    python3 -m pip install --quiet --disable-pip-version-check --target "$toolkit" \
        "nvidia-cuda-nvcc==$version" "nvidia-cuda-crt==$version" "nvidia-nvvm==$version" \
        "nvidia-cuda-runtime==$version" "nvidia-cuda-cccl==$cccl"
fi
# The wheels ship only the versioned library; the linker looks for the plain name.
ln -sf "$(basename "$(ls "$cuda"/lib/libcudart.so.* | head -n 1)")" "$cuda/lib/libcudart.so"

stubs=$toolkit/stubs
mkdir -p "$stubs"
export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PATH=$cuda/bin:$cuda/nvvm/bin:$PATH
export LIBRARY_PATH=$cuda/lib:$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# No GPU to ask: say which architecture to compile the kernels for.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

nvcc --version | tail -n 2
cd "$root"
build() { cargo build --release --locked --features cuda --target-dir "$root/target/cuda" "$@"; }

# candle links the driver, cuBLAS, cuBLASLt, cuRAND and NVRTC. The driver comes only with
# a GPU's driver install and the others are large wheels, so the binary is linked against
# stubs, as CUDA's own lib64/stubs: libraries under the real names (sonames) that define
# the symbols cudarc uses and nothing else. At run time the GPU machine's libraries load.
build --lib "$@"
rlib=$(ls -t "$root"/target/cuda/release/deps/libcudarc-*.rlib | head -n 1)
symbols=$(nm "$rlib" 2>/dev/null | awk '$1 == "U" { print $2 }' | sort -u)
stub() { # soname, link name, symbol pattern
    local file=$stubs/$2.c
    grep -E "$3" <<<"$symbols" | sed 's/.*/void &(void) {}/' > "$file"
    cc -shared -fPIC -Wl,-soname,"$1" -o "$stubs/$2.so" "$file"
}
stub libcuda.so.1 libcuda '^cu[A-Z]'
stub libcublas.so.13 libcublas '^cublas[^L]'
stub libcublasLt.so.13 libcublasLt '^cublasLt'
stub libcurand.so.10 libcurand '^curand'
stub libnvrtc.so.13 libnvrtc '^nvrtc'
build "$@"
echo "built: $root/target/cuda/release/clipscope (CUDA $version, sm_$CUDA_COMPUTE_CAP)"
