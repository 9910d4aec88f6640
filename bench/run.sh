#!/usr/bin/env bash
# Side-by-side timings of clipscope and PyTorch + transformers (fp32) on one model folder,
# same machine, same thread count. Usage:
#   bench/run.sh MODEL_DIR IMAGE [THREADS] [PYTHON]
# MODEL_DIR is a Hugging Face CLIP folder (e.g. one made by
# tests/fixtures/make_fixtures.py --full DIR); PYTHON has torch, torchvision, transformers.
set -euo pipefail
dir=$1 img=$2 threads=${3:-$(nproc)} py=${4:-python3}
bin=${CLIPSCOPE_BIN:-target/release/clipscope}
labels="cat,dog,astronaut,rocket,cup of coffee"
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
echo "== machine: $(nproc) cores, $("$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import all; print(all.cpu()[0])' "$(dirname "$0")"); threads $threads"
echo "== clipscope bench"
"$bin" bench --model-dir "$dir" --batch 1,16 --iters 10 --image "$img"
echo "== PyTorch bench"
"$py" bench/bench_torch.py --model-dir "$dir" --threads "$threads" --iters 10
echo "== one-shot classify, whole process (1 image, 5 labels)"
hyperfine --warmup 1 --runs 5 --export-markdown /dev/stdout \
  -n clipscope "$bin classify '$img' --labels '$labels' --model-dir '$dir'" \
  -n pytorch "$py bench/bench_torch.py --model-dir '$dir' --threads $threads --classify '$img' --labels '$labels'"
