#!/usr/bin/env bash
# Training speed and accuracy of clipscope vs PyTorch (torchvision resnet18), same data,
# split, recipe, image size, batch and threads. Usage:
#   bench/train_compare.sh [THREADS] [PYTHON]
# Makes the four-class shapes set (300 images, 240 training / 60 held out) in a temp dir.
set -euo pipefail
threads=${1:-$(nproc)} py=${2:-python3}
bin=${CLIPSCOPE_BIN:-target/release/clipscope}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
work=$(mktemp -d)
"$bin" data shapes --to "$work/shapes" --per-class 75 --seed 0
echo "== clipscope: resnet18 from scratch, 64 px, AdamW 1e-3, 12 epochs, batch 32, $threads threads"
/usr/bin/time -f "wall %e s, max RSS %M KB" "$bin" train --data "$work/shapes" --pretrained none \
  --image-size 64 --optimizer adamw --lr 1e-3 --epochs 12 --batch-size 32 --output "$work/run"
"$bin" eval --checkpoint "$work/run" --data "$work/shapes" | head -2
echo "== PyTorch $("$py" -c 'import torch; print(torch.__version__)'): the same recipe and split"
/usr/bin/time -f "wall %e s, max RSS %M KB" "$py" bench/train_torch.py --data "$work/shapes" \
  --image-size 64 --optimizer adamw --lr 1e-3 --epochs 12 --batch-size 32 --threads "$threads"
rm -rf "$work"
