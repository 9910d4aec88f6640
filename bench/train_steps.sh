#!/usr/bin/env bash
# One ResNet18 training step (forward + backward + AdamW) and one evaluation-mode forward
# pass, batch 32, no data loading: clipscope (examples/train_step.rs) and PyTorch
# (bench/train_step_torch.py) alternately, same threads; DEVICE=cuda runs both on the GPU
# (a `cuda` build's example), STEPS=N times N steps at every size. Usage:
#   bench/train_steps.sh [THREADS] [PYTHON] [SIZES...]
# Needs `cargo build --release --examples` first.
set -euo pipefail
threads=${1:-$(nproc)} py=${2:-python3}; shift 2 || true
sizes=("${@:-64 128 160 224}")
bin=${CLIPSCOPE_EXAMPLE:-${CARGO_TARGET_DIR:-target}/release/examples/train_step}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
for s in ${sizes[@]}; do
  steps=${STEPS:-$(( s <= 64 ? 15 : (s <= 128 ? 6 : 4) ))}
  echo "== $s px: clipscope"
  "$bin" 32 "$s" "$steps" | grep -E '^(train step|eval forward)'
  echo "== $s px: PyTorch $("$py" -c 'import torch; print(torch.__version__)')"
  "$py" bench/train_step_torch.py 32 "$s" "$steps" "$threads" | grep -E '^(train step|eval forward)'
done
