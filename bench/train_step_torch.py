"""PyTorch counterpart of `examples/train_step.rs` (MODEL=resnet18 or vgg16): training steps,
evaluation forward passes and (CONVS=1) single convolutions on the CPU (DEVICE=cuda: on the
GPU, waiting for it before each reading), no data loading.
Usage: train_step_torch.py [BATCH] [SIZE] [STEPS] [THREADS]"""
import sys, time
import torch, torchvision

batch, size, steps, threads = (list(map(int, sys.argv[1:])) + [32, 64, 10, 2][len(sys.argv) - 1:])[:4]
torch.set_num_threads(threads)
torch.manual_seed(0)
arch = __import__("os").environ.get("MODEL", "resnet18")
device = torch.device(__import__("os").environ.get("DEVICE", "cpu"))
sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
model = getattr(torchvision.models, arch)(num_classes=4).train().to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
x = torch.randn(batch, 3, size, size, device=device)
y = torch.arange(batch, device=device) % 4
times, phases = [], [0.0, 0.0, 0.0]
for i in range(steps + 2):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    sync()
    t1 = time.perf_counter()
    opt.zero_grad()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    opt.step()
    sync()
    t3 = time.perf_counter()
    if i >= 2:
        phases = [phases[0] + t1 - t, phases[1] + t2 - t1, phases[2] + t3 - t2]
    times.append(t3 - t)
print("mean forward {:.1f} ms, backward {:.1f} ms, optimizer {:.1f} ms".format(*(p / steps * 1e3 for p in phases)))
med = sorted(times[2:])[len(times[2:]) // 2]
print(f"train step b{batch} {size}px: median {med * 1e3:.1f} ms, {batch / med:.1f} img/s (fastest {min(times[2:]) * 1e3:.1f} ms)")
model.eval()
ev = []
with torch.no_grad():
    for _ in range(max(steps, 3)):
        t = time.perf_counter()
        model(x)
        sync()
        ev.append(time.perf_counter() - t)
med = sorted(ev)[len(ev) // 2]
print(f"eval forward b{batch} {size}px: median {med * 1e3:.1f} ms, {batch / med:.1f} img/s (fastest {min(ev) * 1e3:.1f} ms)")
if "CONVS" not in __import__("os").environ:
    sys.exit(0)
s = size // 4
for cin, cout, k, st, h in [(3, 64, 7, 2, size), (64, 64, 3, 1, s), (64, 128, 3, 2, s),
                            (128, 128, 3, 1, s // 2), (256, 256, 3, 1, s // 4), (512, 512, 3, 1, s // 8)]:
    x = torch.randn(batch, cin, h, h, requires_grad=True)
    w = (torch.randn(cout, cin, k, k) * 0.1).requires_grad_()
    f, b = [], []
    for _ in range(7):
        t = time.perf_counter()
        out = torch.nn.functional.conv2d(x, w, stride=st, padding=k // 2)
        f.append(time.perf_counter() - t)
        t = time.perf_counter()
        out.sum().backward()
        b.append(time.perf_counter() - t)
    f.sort(); b.sort()
    print(f"conv {cin:>3}->{cout:<3} k{k} s{st} {h:>3}x{h:<3}: fwd {f[3]*1e3:6.2f} ms, bwd {b[3]*1e3:6.2f} ms")
