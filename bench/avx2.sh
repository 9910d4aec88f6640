#!/usr/bin/env bash
# What CPUs without AVX-512 get, measured on one that has it: clipscope built without its
# `avx512` feature (gemm's AVX-512 kernels and clipscope's own left out; CLIP's products
# then run the AVX2 panel kernel) beside PyTorch kept to AVX2, in one run of
# bench/all.py --avx2. Usage:
#   bench/avx2.sh MODEL_DIR [all.py options...]      e.g. bench/avx2.sh /tmp/vit-b32 --threads 2
# The build goes to target/avx2 (about 5 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/avx2
cargo build --release --locked --no-default-features --target-dir "$dir" --bin clipscope --example train_step
CLIPSCOPE_BIN=$dir/release/clipscope CLIPSCOPE_EXAMPLE=$dir/release/examples/train_step \
  python3 bench/all.py "$@" --avx2
