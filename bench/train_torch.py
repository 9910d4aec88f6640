#!/usr/bin/env python3
"""PyTorch side of the CNN training comparison: torchvision's resnet18 trained with the
same recipe as `clipscope train` on the same folder and split.

    python3 bench/train_torch.py --data DIR --image-size 64 --epochs 12 --batch-size 32 \
        --optimizer adamw --lr 1e-3 --threads 2

The split is read from DIR/clipscope-split.json (written by `clipscope train`), so both
see the same held-out images. Augmentation: RandomResizedCrop(S, scale=(0.25, 1)),
horizontal flip; evaluation: Resize(S * 256/224) + CenterCrop(S); ImageNet mean/std;
cosine schedule with one warm-up epoch (when epochs >= 5), as clipscope does.
"""
import argparse, json, math, os, time

import torch
import torchvision
from PIL import Image
from torchvision import transforms as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop-scale", type=float, default=0.25, help="lower bound of RandomResizedCrop scale")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    m = json.load(open(os.path.join(args.data, "clipscope-split.json")))
    s = args.image_size
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    side = round(s * 256 / 224)
    train_tf = T.Compose([T.Resize(side), T.RandomResizedCrop(s, scale=(args.crop_scale, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(side), T.CenterCrop(s), T.ToTensor(), norm])
    load = lambda items: [(Image.open(os.path.join(args.data, p)).convert("RGB"), y) for p, y in items]
    train, val = load(m["train"]), load(m["val"])
    model = torchvision.models.resnet18(num_classes=len(m["classes"]))
    wd = args.weight_decay if args.weight_decay is not None else (0.01 if args.optimizer == "adamw" else 1e-4)
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=wd)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=wd)
    steps = math.ceil(len(train) / args.batch_size)
    total, warm = steps * args.epochs, (steps if args.epochs >= 5 else 0)
    def lr_at(k):
        if k < warm:
            return args.lr * (0.01 + 0.99 * (k + 1) / warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warm) / max(1, total - warm))))
    g = torch.Generator().manual_seed(args.seed)
    k = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        t0 = time.perf_counter(); seen = 0; loss_sum = 0.0; correct = 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x = torch.stack([train_tf(train[j][0]) for j in idx]); y = torch.tensor([train[j][1] for j in idx])
            for pg in opt.param_groups:
                pg["lr"] = lr_at(k)
            out = model(x); loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad(); loss.backward(); opt.step(); k += 1
            seen += len(idx); loss_sum += loss.item() * len(idx); correct += (out.argmax(1) == y).sum().item()
        secs = time.perf_counter() - t0
        model.eval(); vc = 0; vl = 0.0
        with torch.no_grad():
            for i in range(0, len(val), 64):
                x = torch.stack([val_tf(im) for im, _ in val[i:i + 64]]); y = torch.tensor([l for _, l in val[i:i + 64]])
                out = model(x); vl += torch.nn.functional.cross_entropy(out, y, reduction="sum").item(); vc += (out.argmax(1) == y).sum().item()
        print(f"epoch {epoch:>3}  train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}  val loss {vl / len(val):.4f} acc {vc / len(val):.4f}  {secs:.1f} s  {seen / secs:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
