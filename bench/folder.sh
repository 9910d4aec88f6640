#!/usr/bin/env bash
# Cost per extra image of a folder job, decoding included, whole processes:
# `clipscope embed` with decoding overlapped on worker threads (the default) and without
# (--decode-threads 0), against PyTorch's batched pipeline (bench/bench_torch.py
# --embed-folder: Pillow + OpenAI's transforms in a DataLoader, batches of 16, with one
# decoding worker process and with none). Each runs as a whole process on a folder of
# SMALL and of LARGE photos, in interleaved rounds (RUNS, default 3, after a warm-up
# round); the cost per extra image is the difference of the medians over
# LARGE - SMALL, so loading, imports and start-up cancel out. No cache: --no-cache.
#   bench/folder.sh MODEL_DIR [SMALL] [LARGE] [THREADS] [PYTHON]
set -euo pipefail
dir=$1 small=${2:-16} large=${3:-80} threads=${4:-$(nproc)} py=${5:-python3}
bin=${CLIPSCOPE_BIN:-target/release/clipscope}
runs=${RUNS:-3}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Photos as JPEGs at camera-like sizes, from the fixture photos (each file different).
for n in "$small" "$large"; do "$py" "$(dirname "$0")/make_photos.py" "$work/$n" "$n"; done

echo "== machine: $(nproc) cores, $("$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import all; print(all.cpu()[0])' "$(dirname "$0")"); threads $threads; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== folders of $small and $large JPEG photos (640x480 to 1024x683); medians of $runs interleaved rounds after a warm-up round"
"$py" - "$work" "$small" "$large" "$runs" "$bin" "$dir" "$threads" "$py" <<'PY'
import resource, statistics, subprocess, sys, time
work, small, large, runs, bin, model, threads, py = sys.argv[1:]
runs = int(runs)
torch = [py, "bench/bench_torch.py", "--model-dir", model, "--threads", threads, "--batch", "16"]
pipelines = {
    "clipscope, decoding overlapped (default)": lambda d: [bin, "embed", d, "--model-dir", model, "--no-cache"],
    "clipscope, --decode-threads 0": lambda d: [bin, "embed", d, "--model-dir", model, "--no-cache", "--decode-threads", "0"],
    "PyTorch, DataLoader 1 worker": lambda d: torch + ["--embed-folder", d, "--workers", "1"],
    "PyTorch, DataLoader 0 workers": lambda d: torch + ["--embed-folder", d, "--workers", "0"],
}
def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

# Wall time, and CPU time (user + system, all threads and worker processes): on a busy
# machine the CPU time per extra image is the steadier measure of the work done.
times = {(name, n): ([], []) for name in pipelines for n in (small, large)}
for r in range(runs + 1):
    for (name, n), (wall, cpus) in times.items():
        t, c = time.perf_counter(), cpu()
        subprocess.run(pipelines[name](f"{work}/{n}"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r > 0:  # the first round warms the page cache
            wall.append(time.perf_counter() - t)
            cpus.append(cpu() - c)
extra = int(large) - int(small)
print(f"| pipeline | {small} photos, s | {large} photos, s | per extra image, ms | CPU per extra image, ms |")
print("|---|---:|---:|---:|---:|")
for name in pipelines:
    (wa, ca), (wb, cb) = times[name, small], times[name, large]
    med = statistics.median
    spread = lambda ts: f"{min(ts):.2f}-{max(ts):.2f}"
    per = (med(wb) - med(wa)) / extra * 1e3
    per_cpu = (med(cb) - med(ca)) / extra * 1e3
    print(f"| {name} | {med(wa):.2f} ({spread(wa)}) | {med(wb):.2f} ({spread(wb)}) | {per:.1f} | {per_cpu:.1f} |")
PY
