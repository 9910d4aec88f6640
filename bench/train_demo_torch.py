#!/usr/bin/env python3
"""The demo CLIP's training in PyTorch + transformers, for side-by-side timing and for
trying recipes quickly.

The same architecture (models/demo/config.json as a transformers CLIPModel), the same
loss (CLIP's symmetric cross entropy with every caption that describes a picture counted
as a positive), AdamW with weight decay on tensors of two or more dimensions, linear
warm-up then cosine decay, and logit_scale clamped to [0, ln 100] after each step.

Data: pairs dumped by clipscope's own generator (`cargo run --release --example
dump_scenes N DIR SEED`): DIR/pixels.u8 (N x 64 x 64 x 3 crops, already through CLIP's
preprocessing up to normalisation) and DIR/meta.jsonl (caption, scene facts, caption
mentions).

    python3 bench/train_demo_torch.py DIR --steps 300 --batch 128 [--threads 2]
    python3 bench/train_demo_torch.py DIR --time-only --steps 20   # pairs/s only

Prints pairs per second (steps after the first five) and, every --eval-every steps, the
twelve-label top-1 on held-out dumped pictures of those combinations.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import CLIPConfig, CLIPModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "gray"]
BENCH = [(s, c) for s in range(3) for c in range(4)]


def load(dir_):
    meta = [json.loads(l) for l in open(os.path.join(dir_, "meta.jsonl"))]
    pix = np.fromfile(os.path.join(dir_, "pixels.u8"), dtype=np.uint8).reshape(len(meta), 64, 64, 3)
    return pix, meta


SIZE = 64


def to_pixels(arr):
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != SIZE:
        # Recipe trials at other sizes only; the demo itself trains at its config's size.
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bicubic", antialias=True).clamp(0, 1)
    return (x - MEAN) / STD


def tokenize(tok, texts):
    ids = [[49406] + tok.encode(t, add_special_tokens=False).ids + [49407] for t in texts]
    width = max(len(i) for i in ids)
    return torch.tensor([i + [0] * (width - len(i)) for i in ids])


def positives(meta, idx):
    scenes = np.array([meta[i]["scene"] for i in idx])
    ments = np.array([meta[i]["mentions"] for i in idx])
    # pos[i, j]: caption j fits picture i (every stated fact holds).
    ok = (ments[None, :, :] < 0) | (ments[None, :, :] == scenes[:, None, :])
    return torch.from_numpy(ok.all(-1).astype(np.float32))


def group_by_colour(meta, n):
    colours = np.array([meta[i]["scene"][1] for i in range(n)])
    return [np.flatnonzero(colours == c) for c in range(len(COLOURS))]


def loss_fn(model, pixels, ids, pos):
    out = model(input_ids=ids, pixel_values=pixels)
    logits = out.logits_per_image
    li = -(torch.log_softmax(logits, 1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
    # Captions with no picture in the batch (swapped negatives) only serve as negatives.
    keep = pos.sum(0) > 0
    pt = pos.t()[keep]
    lt = -(torch.log_softmax(logits.t()[keep], 1) * (pt / pt.sum(1, keepdim=True))).sum(1).mean()
    return (li + lt) / 2


def swapped(meta_item, rng, new=None):
    """The caption with its shape word swapped for another shape (a hard negative, as in
    NegCLIP), and the mentions it then states; None when the caption names no shape."""
    cap, ments = meta_item["caption"], list(meta_item["mentions"])
    if ments[0] < 0:
        return None
    old = SHAPES[ments[0]]
    if new is None:
        new = int(rng.integers(len(SHAPES) - 1))
        new = new + (new >= ments[0])
    elif new == ments[0]:
        return None
    words = cap.split(" ")
    words = [SHAPES[new] + w[len(old):] if w.rstrip(".") == old else w for w in words]
    ments[0] = new
    return " ".join(words), ments


def bench_eval(model, tok, pix, meta, idx):
    labels = [f"a {COLOURS[c]} {SHAPES[s]}" for s, c in BENCH]
    with torch.no_grad():
        t = model.text_projection(model.text_model(input_ids=tokenize(tok, labels)).pooler_output)
        t = t / t.norm(dim=-1, keepdim=True)
        hits = 0
        for k in range(0, len(idx), 256):
            chunk = idx[k:k + 256]
            f = model.visual_projection(model.vision_model(pixel_values=to_pixels(pix[chunk])).pooler_output)
            f = f / f.norm(dim=-1, keepdim=True)
            pred = (f @ t.t()).argmax(1).tolist()
            truth = [BENCH.index(tuple(meta[i]["scene"][:2])) for i in chunk]
            hits += sum(int(p == q) for p, q in zip(pred, truth))
    return hits / max(1, len(idx))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--config", default=os.path.join(ROOT, "models/demo/config.json"))
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--easy", help="a dump drawn at variety 0, used for the first --easy-steps steps")
    ap.add_argument("--easy-steps", type=int, default=0)
    ap.add_argument("--colours-per-batch", type=int, default=0,
                    help="draw each batch from this many colours (0: any), so shape must tell pictures apart")
    ap.add_argument("--swap-negatives", action="store_true",
                    help="add each caption with its shape swapped as an extra negative caption")
    ap.add_argument("--all-swaps", action="store_true", help="with --swap-negatives: every other shape")
    ap.add_argument("--grouped-frac", type=float, default=1.0,
                    help="share of steps whose batch is colour-grouped (with --colours-per-batch)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = json.load(open(args.config))
    global SIZE
    SIZE = cfg["vision_config"]["image_size"]
    model = CLIPModel(CLIPConfig(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                                 projection_dim=cfg["projection_dim"]))
    model.train()
    tok = Tokenizer.from_file(os.path.join(ROOT, "models/demo/tokenizer.json"))
    pix, meta = load(args.dir)
    n = len(meta)
    held = [i for i in range(n - 3000, n) if tuple(meta[i]["scene"][:2]) in BENCH]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    plain = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                            lr=args.lr)
    rng = np.random.default_rng(0)
    easy = load(args.easy) if args.easy else None
    t0 = None
    by_colour = {}
    for step in range(args.steps):
        if step == 5:
            t0 = time.perf_counter()
        lr = args.lr * (0.01 + 0.99 * (step + 1) / args.warmup) if step < args.warmup else \
            args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        p_, m_ = easy if easy is not None and step < args.easy_steps else (pix, meta)
        n_ = len(m_) if p_ is not pix else n - 3000
        if args.colours_per_batch and rng.random() < args.grouped_frac:
            by = by_colour.setdefault(id(m_), group_by_colour(m_, n_))
            cs = rng.choice(len(by), args.colours_per_batch, replace=False)
            pool = np.concatenate([by[c] for c in cs])
            idx = rng.choice(pool, args.batch, replace=False)
        else:
            idx = rng.choice(n_, args.batch, replace=False)
        caps = [m_[i]["caption"] for i in idx]
        pos = positives(m_, idx)
        if args.swap_negatives:
            if args.all_swaps:
                extra = [x for x in (swapped(m_[i], rng, k) for i in idx for k in range(len(SHAPES))) if x is not None]
            else:
                extra = [x for x in (swapped(m_[i], rng) for i in idx) if x is not None]
            scenes = np.array([m_[i]["scene"] for i in idx])
            em = np.array([m for _, m in extra])
            ok = ((em[None, :, :] < 0) | (em[None, :, :] == scenes[:, None, :])).all(-1)
            pos = torch.cat([pos, torch.from_numpy(ok.astype(np.float32))], 1)
            caps += [c for c, _ in extra]
        loss = loss_fn(model, to_pixels(p_[idx]), tokenize(tok, caps), pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if not args.time_only and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            model.eval()
            acc = bench_eval(model, tok, pix, meta, held)
            model.train()
            print(f"step {step + 1} loss {loss.item():.4f} lr {lr:.2e} twelve-label top-1 {acc:.3f}", flush=True)
    if t0 is not None:
        dt = time.perf_counter() - t0
        print(f"pairs/s {(args.steps - 5) * args.batch / dt:.1f} ({args.steps - 5} steps of {args.batch}, "
              f"{args.threads} threads, torch {torch.__version__})", flush=True)


if __name__ == "__main__":
    main()
