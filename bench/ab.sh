#!/usr/bin/env bash
# Two builds of clipscope alternated: `clipscope bench` of each in turn, ROUNDS times, on
# a shared machine where single timings move by a third. Prints every pair (ms per item
# for each encoder row) and each build's median and minimum per row.
#   bench/ab.sh MODEL_DIR OLD_BIN NEW_BIN [ROUNDS] [BATCHES] [THREADS]
#   e.g. cp target/release/clipscope /tmp/old; (change, build); \
#        bench/ab.sh /tmp/vit-b32 /tmp/old target/release/clipscope 10 1,16 2
set -euo pipefail
dir=$1 old=$2 new=$3 rounds=${4:-10} batches=${5:-1,16} threads=${6:-$(nproc)}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
per_item() {
  RAYON_NUM_THREADS=$threads "$1" bench --model-dir "$dir" --batch "$batches" --iters 5 |
    awk '/encoder/ {printf "%s ", $(NF-1)}'
}
for _ in $(seq "$rounds"); do
  echo "old $(per_item "$old")new $(per_item "$new")" | tee -a "$out"
done
python3 - "$out" <<'PY'
import statistics, sys
rows = {"old": [], "new": []}
for line in open(sys.argv[1]):
    cells = line.split()
    at = cells.index("new")
    rows["old"].append([float(c) for c in cells[1:at]])
    rows["new"].append([float(c) for c in cells[at + 1:]])
for name, runs in rows.items():
    cols = list(zip(*runs))
    print(name, " | ".join(f"median {statistics.median(c):.1f} min {min(c):.1f}" for c in cols))
PY
