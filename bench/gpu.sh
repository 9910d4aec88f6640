#!/usr/bin/env bash
# Everything one lease of an NVIDIA GPU machine checks, clipscope beside PyTorch, on a
# machine with the driver, python3 with torch (CUDA), transformers, safetensors, pillow
# and numpy, and no network. In order, each part under its own time limit so that one
# that hangs leaves the others their time:
#
#   1. a classification on the GPU (a binary that cannot use it fails here, loudly);
#   2. parity: clipscope's embeddings on the GPU against transformers' reference
#      (bench/reference_parity.py) and against clipscope's own f32 on the CPU, with bf16
#      and f16 beside them (bench/precision.py);
#   3. the encoders at batch 1, 16 and 64 (f32, and bf16 against autocast) and a one-shot
#      classification, medians of interleaved rounds (bench/all.py --device cuda);
#   4. ResNet18 training steps and evaluation passes, batch 32 at 64 and 224 px, against
#      torchvision's on the same GPU (bench/train_steps.sh with DEVICE=cuda);
#   5. the shapes recipe trained end to end on the GPU, then evaluated there.
#
#   bench/gpu.sh [BINARY] [ROUNDS]
#
# BINARY is a `cuda` build (deploy/cuda-build.sh), default target/cuda/release/clipscope;
# EXAMPLE is that build's examples/train_step (part 4 is skipped without it). A name
# ending in .xz is unpacked first (xz -9 brings a stripped build to about 14 MB, to carry
# it to a machine that cannot build). Build with a CUDA no newer than the machine's
# driver: candle's kernels ship as PTX, which a driver refuses from a newer toolkit
# (CUDA_WHEEL_VERSION=13.0.88 CCCL_WHEEL_VERSION=13.0.85 for a 580 driver, CUDA 13.0).
# cuBLAS and the other libraries clipscope loads at run time come from PyTorch's CUDA
# wheels when the system has none. The model goes to $WORK/vit-b32 (default
# /tmp/clipscope-gpu), made once. SKIP=parity,encoders,steps,train leaves parts out.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cuda/release/clipscope}
rounds=${2:-3}
work=${WORK:-/tmp/clipscope-gpu}
device=${DEVICE:-cuda}
skip=,${SKIP:-},
mkdir -p "$work"
export PYTHONUNBUFFERED=1

# Python's lzma: the GPU machine may have no xz command.
unpack() {
    if [[ $1 != *.xz ]]; then echo "$1"; return; fi
    local to=$work/$(basename "${1%.xz}")
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$1" "$to"
    chmod +x "$to"
    echo "$to"
}
bin=$(unpack "$bin")
example=${EXAMPLE:-target/cuda/release/examples/train_step}
[ -e "$example" ] && example=$(unpack "$example")

# Every folder of NVIDIA libraries among Python's packages (cuBLAS, cuBLASLt, cuRAND,
# NVRTC, the runtime), for the libraries clipscope loads when it runs.
nvidia_libs=$(python3 -c 'import glob, os, site
dirs = {os.path.dirname(f) for d in site.getsitepackages()
        for f in glob.glob(os.path.join(d, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

section() { echo; echo "=== $* ($(date +%T))"; }
skipped() { [[ $skip == *,$1,* ]]; }

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
grep -m1 'model name' /proc/cpuinfo
echo "cores: $(nproc); torch: $(python3 -c 'import torch, transformers; print(torch.__version__, "transformers", transformers.__version__)')"

model=$work/vit-b32
if [ ! -f "$model/model.safetensors" ]; then
    section "making the seeded full-size ViT-B/32"
    timeout 300 python3 tests/fixtures/make_fixtures.py --full "$model" || exit 1
fi

section "1. one classification on $device"
if ! timeout 120 "$bin" classify tests/fixtures/images/astronaut.png --labels "astronaut,cat" \
    --model-dir "$model" --device "$device" --no-cache; then
    echo "clipscope could not classify on $device; what it links and what it can load:"
    ldd "$bin"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    # Go on: the CNN's parts use other code, and their errors say more.
fi

export CLIPSCOPE_BIN=$bin
if ! skipped parity; then
    section "2. parity on $device"
    timeout 180 python3 bench/reference_parity.py "$model" --device "$device"
    timeout 180 python3 bench/reference_parity.py "$model" --device "$device" --precision bf16 --min-cosine 0.99
    timeout 240 python3 bench/precision.py "$model" --device "$device" --ref-device cpu
fi

if ! skipped encoders; then
    section "3. encoders and one-shot classification on $device, $rounds rounds"
    timeout 420 python3 bench/all.py "$model" --device "$device" --batch 1,16,64 \
        --rounds "$rounds" --threads "${THREADS:-$(nproc)}"
fi

if ! skipped steps && [ -x "$example" ]; then
    section "4. ResNet18 training steps on $device, batch 32"
    DEVICE=$device STEPS=${STEPS:-20} CLIPSCOPE_EXAMPLE=$example \
        timeout 300 bench/train_steps.sh "$(nproc)" python3 64 224
fi

if ! skipped train; then
    section "5. the shapes recipe trained and evaluated on $device"
    shapes=$work/shapes
    [ -d "$shapes" ] || "$bin" data shapes --to "$shapes" --per-class 75 --seed 0 >/dev/null
    rm -rf "$work/run"
    time timeout 300 "$bin" train --data "$shapes" --pretrained none --image-size 64 \
        --optimizer adamw --lr 1e-3 --epochs 12 --batch-size 32 --output "$work/run" \
        --device "$device"
    timeout 120 "$bin" eval --checkpoint "$work/run" --data "$shapes" --device "$device" | head -n 3
fi
