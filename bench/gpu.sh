#!/usr/bin/env bash
# clipscope beside PyTorch on an NVIDIA GPU: the encoders at batch 1, 16 and 64 and a
# one-shot classification, same seeded full-size ViT-B/32, medians of interleaved rounds
# (bench/all.py --device cuda), on a machine with the driver, python3 with torch (CUDA),
# transformers, safetensors, pillow and numpy, and no network.
#
#   bench/gpu.sh [BINARY] [ROUNDS]
#
# BINARY is a `cuda` build (deploy/cuda-build.sh), default target/cuda/release/clipscope;
# a BINARY.xz is unpacked first (xz -9 brings the stripped build under 14 MB, to carry
# it to a machine that cannot build). Build with a CUDA no newer than the machine's
# driver: candle's kernels ship as PTX, and a driver refuses PTX from a newer toolkit
# (CUDA_WHEEL_VERSION=13.0.2 deploy/cuda-build.sh for a 580 driver, which is CUDA 13.0).
# The model goes to $WORK/vit-b32 (default /tmp/clipscope-gpu), made once.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cuda/release/clipscope}
rounds=${2:-3}
work=${WORK:-/tmp/clipscope-gpu}
mkdir -p "$work"
if [[ $bin == *.xz ]]; then
    # Python's lzma: the GPU machine may have no xz command.
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$bin" "$work/clipscope"
    chmod +x "$work/clipscope"
    bin=$work/clipscope
fi
# Binaries built before deploy/cuda-build.sh linked CUDA's runtime statically need
# libcudart.so.13 (candle-kernels' MoE library); PyTorch's CUDA wheels carry one.
if ldd "$bin" | grep -q "libcudart.*not found"; then
    cudart=$(python3 -c 'import glob, os, site
for d in site.getsitepackages():
    for f in glob.glob(os.path.join(d, "nvidia", "**", "libcudart.so.1*"), recursive=True):
        print(os.path.dirname(f)); raise SystemExit')
    export LD_LIBRARY_PATH=$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
model=$work/vit-b32
if [ ! -f "$model/model.safetensors" ]; then
    python3 tests/fixtures/make_fixtures.py --full "$model"
fi
# One classification first: a binary that cannot use the GPU fails here, loudly.
"$bin" classify tests/fixtures/images/astronaut.png --labels "astronaut,cat" \
    --model-dir "$model" --device "${DEVICE:-cuda}" --no-cache
CLIPSCOPE_BIN=$bin python3 bench/all.py "$model" --device "${DEVICE:-cuda}" \
    --batch 1,16,64 --rounds "$rounds" --threads "${THREADS:-$(nproc)}"
