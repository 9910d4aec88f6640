"""Sum up the convolution timings that `CLIPSCOPE_LOG=clipscope::cnn::conv=trace` logs
(`examples/train_step` or the `clipscope` binary, on stderr): per op and shape, the
count, median and fastest time. Usage:
    CLIPSCOPE_LOG=clipscope::cnn::conv=trace RAYON_NUM_THREADS=2 \\
        target/release/examples/train_step 32 64 5 2>&1 >/dev/null | python3 bench/conv_times.py
(the first lines of each op are the warm-up steps; EVAL_ONLY=1 times evaluation alone)."""
import re, statistics, sys
from collections import defaultdict

FIELDS = ("name", "c", "cout", "k", "stride", "h", "w")
times = defaultdict(list)
for line in sys.stdin:
    if "convolution op" not in line:
        continue
    kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
    key = tuple(kv.get(f, "?").strip('"') for f in FIELDS)
    times[key].append(float(kv["ms"]))
if not times:
    sys.exit("no convolution timings on standard input (set CLIPSCOPE_LOG=clipscope::cnn::conv=trace)")
print(f"{'op':26} {'C':>4} {'Cout':>4} {'k':>2} {'s':>2} {'HxW':>7} {'n':>4} {'median ms':>10} {'min ms':>8}")
for key, ms in sorted(times.items()):
    name, c, cout, k, stride, h, w = key
    print(f"{name:26} {c:>4} {cout:>4} {k:>2} {stride:>2} {h + 'x' + w:>7} {len(ms):>4} "
          f"{statistics.median(ms):>10.2f} {min(ms):>8.2f}")
