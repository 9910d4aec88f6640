#!/usr/bin/env python3
"""Every workload of docs/benchmarks.md, clipscope beside PyTorch, in one run.

    cargo build --release --bins --examples
    python3 tests/fixtures/make_fixtures.py --full /tmp/vit-b32
    python3 bench/all.py /tmp/vit-b32 [--threads 2] [--rounds 3] [--skip folder,train]
    python3 bench/all.py /tmp/vit-b32 --device cuda --batch 1,16,64   # a `cuda` build (bench/gpu.sh)

Prints the CPU (model and vector extensions), then one table: for each workload the
median of interleaved rounds of each side (clipscope, then PyTorch, in every round), the
ratio clipscope / PyTorch (time: below 1 is faster; images per second: above 1 is
faster) and the issue's target. Workloads:

- the image encoder at batch 1 and 16 and the text encoder on 5 prompts, f32
  (`clipscope bench` against `bench/bench_torch.py`), and bf16 where the CPU has
  AVX512-BF16 or AMX (`--precision bf16` against `torch.autocast`);
- one-shot classification of 10 photos against 10 labels as a whole process (wall time
  and peak resident memory, the latter against the weights file's size), with a fresh
  cache: the first run, which writes the model's prepared weights, is reported apart;
- a folder job's cost per extra image, decoding included (`bench/folder.sh`: clipscope's
  default pipeline against the faster in this run of PyTorch's DataLoader with one
  worker and with none);
- a ResNet18 training step at 64 px, batch 32 (`bench/train_steps.sh`'s two programs).

With --avx2 both sides stay off AVX-512, to measure on an AVX-512 machine what CPUs
without it get: clipscope must be a build without its `avx512` feature (bench/avx2.sh
builds one), PyTorch runs with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and
MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL ignores the last on AMD CPUs, where it runs its AVX2
code anyway), and bf16 is left out.

With --mkl-intel PyTorch's MKL takes the code path it takes on Intel CPUs: on AMD CPUs
MKL runs its fp32 products on a slower path whatever the CPU has (on a Zen 5 EPYC, 2
threads: 192 GFLOP/s on a 2048 x 2048 product, 446 with this), so a comparison there
flatters clipscope. The option compiles a one-line library that answers MKL's
`mkl_serv_intel_cpu_true()` with 1 and preloads it (LD_PRELOAD) into every command.

With --device cuda both sides run the encoders (f32, and bf16 against autocast) and the
one-shot classification on the GPU; the folder pipeline's timing and the CNN step are
CPU workloads, left out.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LABELS = "cat,dog,astronaut,rocket,cup of coffee,camera,person,car,tree,house"


def cpu():
    info = open("/proc/cpuinfo").read()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    family = re.search(r"^cpu family\s*:\s*(.*)$", info, re.M)
    number = re.search(r"^model\s*:\s*(.*)$", info, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
    ext = [f for f in ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"] if f in flags]
    name = model.group(1) if model else "unknown"
    # Virtual machines often name only the vendor line ("AMD EPYC": Zen 3 is family 25
    # model 1, Zen 4 family 25 model 17, Zen 5 family 26), so the numbers go with it.
    if family and number:
        name += f" (family {family.group(1)} model {number.group(1)})"
    return name, ext


# clipscope's warnings in the run (an unwritable cache, say, changes what is measured),
# printed under the table.
WARNINGS = set()


def run(cmd, env=None):
    """Run `cmd`; its stdout, wall seconds and peak resident KiB."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        err.seek(0)
        stderr = err.read()
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}\n{stderr[-2000:]}")
    WARNINGS.update(line for line in stderr.splitlines() if line.startswith("clipscope: warning"))
    return out, wall, usage.ru_maxrss


def encoder_rows(text):
    """`clipscope bench` / `bench_torch.py` lines: {workload: ms per item for batches of
    images, ms per call otherwise}."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"(image encoder, batch (\d+)|text encoder, 5 prompts)\s+([\d.]+) ms\s+([\d.]+) ms/item", line)
        if m:
            batched = m.group(2) is not None and int(m.group(2)) > 1
            rows[m.group(1)] = float(m.group(4)) if batched else float(m.group(3))
    return rows


def photos(work, n, py):
    """A folder of `n` camera-sized JPEGs (bench/make_photos.py); its path."""
    d = os.path.join(work, f"photos{n}")
    subprocess.run([py, "bench/make_photos.py", d, str(n)], check=True)
    return d


def mkl_intel_shim(work):
    """A library for LD_PRELOAD whose `mkl_serv_intel_cpu_true` tells MKL the CPU is
    Intel's, built with the system's C compiler; its path."""
    src, lib = os.path.join(work, "mkl_intel.c"), os.path.join(work, "libmkl_intel.so")
    with open(src, "w") as f:
        f.write("int mkl_serv_intel_cpu_true(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src], check=True)
    return lib


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="a Hugging Face CLIP folder (tests/fixtures/make_fixtures.py --full DIR)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per workload; medians are reported")
    ap.add_argument("--python", default=sys.executable, help="a Python with torch, torchvision, transformers, pillow")
    ap.add_argument("--skip", default="", help="comma-separated: bf16, oneshot, folder, train")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for a `cuda` build of clipscope")
    ap.add_argument("--batch", default="1,16", help="image-encoder batch sizes")
    ap.add_argument("--avx2", action="store_true", help="both sides without AVX-512 (see above)")
    ap.add_argument("--mkl-intel", action="store_true", help="MKL on its Intel code path on AMD CPUs (see above)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.avx2:
        skip.add("bf16")
    on_gpu = args.device != "cpu"
    if on_gpu:
        skip |= {"folder", "train"}
    bin = os.environ.get("CLIPSCOPE_BIN", "target/release/clipscope")
    step_bin = os.environ.get("CLIPSCOPE_EXAMPLE", "target/release/examples/train_step")
    t = str(args.threads)
    work = tempfile.mkdtemp()
    # clipscope's cache (prepared weights, docs/models.md) in the scratch folder.
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, CLIPSCOPE_CACHE=os.path.join(work, "cache"))
    if args.avx2:
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    if args.mkl_intel:
        env["LD_PRELOAD"] = mkl_intel_shim(work)
    py = args.python
    model, ext = cpu()
    torch_version = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True).stdout.strip()
    notes = ["both sides kept to AVX2"] * args.avx2 + ["MKL on its Intel path"] * args.mkl_intel
    print(f"CPU: {model}; {os.cpu_count()} cores; {'; '.join([' '.join(ext)] + notes)}")
    if on_gpu:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        print(f"GPU ({args.device}): {gpu or 'nvidia-smi gave nothing'}")
    device = ["--device", args.device]
    print(f"threads {t}; PyTorch {torch_version}; {args.rounds} interleaved rounds, medians; load {os.getloadavg()[0]:.2f}")
    table = []  # (workload, clipscope, pytorch, ratio, target)
    med = statistics.median

    precisions = [("f32", [], [])]
    if "bf16" not in skip and (on_gpu or "avx512_bf16" in ext or "amx_bf16" in ext):
        precisions.append(("bf16", ["--precision", "bf16"], ["--bf16"]))
    for name, ours_flags, torch_flags in precisions:
        ours, theirs = {}, {}
        kernel = ""
        for _ in range(args.rounds):
            out, _, _ = run([bin, "bench", "--model-dir", args.model_dir, "--batch", args.batch, "--iters", "10", *device, *ours_flags], env)
            # "precision bf16 (amx)": which kernel clipscope's products ran on.
            m = re.search(r"precision \w+ \(([^)]+)\)", out)
            kernel = f" on {m.group(1)}" if m else kernel
            if args.avx2 and m and m.group(1) != "avx2":
                sys.exit(f"--avx2 wants a build without the avx512 feature; {bin} runs {m.group(1)} (bench/avx2.sh)")
            for k, v in encoder_rows(out).items():
                ours.setdefault(k, []).append(v)
            out, _, _ = run([py, "bench/bench_torch.py", "--model-dir", args.model_dir, "--threads", t, "--iters", "10", "--batch", args.batch, *device, *torch_flags], env)
            for k, v in encoder_rows(out).items():
                theirs.setdefault(k, []).append(v)
        target = "<= 0.9" if name == "f32" else "<= 1.0" if on_gpu else "<= 1.0 (AMX)"
        for k in ours:
            unit = "ms/image" if re.search(r"batch (\d\d|[2-9])", k) else "ms"
            a, b = med(ours[k]), med(theirs[k])
            label = f"{k} ({name}{kernel}{', PyTorch autocast' if name == 'bf16' else ''}{', ' + args.device if on_gpu else ''})"
            table.append((label, f"{a:.1f} {unit}", f"{b:.1f} {unit}", f"{a / b:.2f}", target))

    weights = os.path.getsize(os.path.join(args.model_dir, "model.safetensors"))
    if "oneshot" not in skip:
        folder = photos(work, 10, py)
        ours_cmd = [bin, "classify", folder, "--labels", LABELS, "--model-dir", args.model_dir, "--no-cache", *device]
        torch_cmd = [py, "bench/bench_torch.py", "--model-dir", args.model_dir, "--threads", t, "--classify", folder, "--labels", LABELS, *device]
        # A fresh cache: the first run of a model writes its prepared weights there
        # (docs/models.md), the later ones map them.
        cache_env = dict(env, CLIPSCOPE_CACHE=os.path.join(work, "cache-oneshot"))
        run(torch_cmd, env)  # warm the page cache
        _, first_wall, first_kib = run(ours_cmd, cache_env)
        walls, rss = {"c": [], "p": []}, {"c": [], "p": []}
        for _ in range(args.rounds):
            for side, cmd in (("c", ours_cmd), ("p", torch_cmd)):
                _, wall, kib = run(cmd, cache_env)
                walls[side].append(wall)
                rss[side].append(kib * 1024)
        a, b = med(walls["c"]), med(walls["p"])
        table.append(("one-shot classify, 10 photos x 10 labels, whole process", f"{a:.2f} s", f"{b:.2f} s", f"{a / b:.2f}", "<= 0.15"))
        table.append(("the same, a model's first run (writes its prepared weights; once)", f"{first_wall:.2f} s, {first_kib / 2**10:.0f} MiB", "", f"{first_wall / b:.2f}", ""))
        a, b = med(rss["c"]), med(rss["p"])
        table.append(("peak memory of that run / weights file", f"{a / 2**20:.0f} MiB ({a / weights:.2f}x)", f"{b / 2**20:.0f} MiB ({b / weights:.2f}x)", f"{a / b:.2f}", "<= 1.3x the file"))

    if "folder" not in skip:
        out = subprocess.run(["bench/folder.sh", args.model_dir, "16", "112", t, py], capture_output=True, text=True, env=dict(env, RUNS=str(args.rounds))).stdout
        rows = {}
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 5 and cells[3].replace(".", "").replace("-", "").isdigit():
                rows[cells[0]] = (float(cells[3]), float(cells[4]))
        a = rows.get("clipscope, decoding overlapped (default)")
        # PyTorch's faster pipeline in this run: on two cores a DataLoader worker
        # process can cost more than it overlaps.
        torch_rows = [(name, r) for name, r in rows.items() if name.startswith("PyTorch")]
        if a and torch_rows:
            name, b = min(torch_rows, key=lambda nr: nr[1][0])
            loader = name.removeprefix("PyTorch, ")
            table.append((f"folder job, cost per extra image (wall; PyTorch's faster: {loader})", f"{a[0]:.1f} ms", f"{b[0]:.1f} ms", f"{a[0] / b[0]:.2f}", "<= 0.8"))
            table.append(("folder job, CPU time per extra image (same pipelines)", f"{a[1]:.1f} ms", f"{b[1]:.1f} ms", f"{a[1] / b[1]:.2f}", ""))

    if "train" not in skip and os.path.exists(step_bin):
        ours, theirs = [], []
        pat = re.compile(r"^train step.*?([\d.]+) img/s", re.M)
        for _ in range(args.rounds):
            out, _, _ = run([step_bin, "32", "64", "15"], env)
            ours += [float(x) for x in pat.findall(out)]
            out, _, _ = run([py, "bench/train_step_torch.py", "32", "64", "15", t], env)
            theirs += [float(x) for x in pat.findall(out)]
        if ours and theirs:
            a, b = med(ours), med(theirs)
            table.append(("ResNet18 training step, 64 px, batch 32", f"{a:.1f} images/s", f"{b:.1f} images/s", f"{a / b:.2f}", ">= 0.9"))

    print()
    print("| workload | clipscope | PyTorch | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    for line in sorted(WARNINGS):
        print(f"\n{line}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
