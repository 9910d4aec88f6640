#!/usr/bin/env python3
"""Pillow's side of examples/decode_bench.rs: per photo of FOLDER, on one thread, the
time to read and decode it (`Image.open` + `load`) and OpenAI's preprocessing (torchvision
Resize bicubic, CenterCrop, RGB, ToTensor, Normalize); medians over ROUNDS passes.

    python3 bench/decode_pillow.py FOLDER [ROUNDS]
"""
import glob
import os
import statistics
import sys
import time

import torch
from PIL import Image
from torchvision import transforms as T

folder = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(1)
tf = T.Compose(
    [
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.Lambda(lambda im: im.convert("RGB")),
        T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ]
)
paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(p))
decode, prep = [], []
for _ in range(rounds):
    d = p = 0.0
    for path in paths:
        t = time.perf_counter()
        im = Image.open(path)
        im.load()
        t1 = time.perf_counter()
        tf(im)
        d += t1 - t
        p += time.perf_counter() - t1
    decode.append(d / len(paths) * 1e3)
    prep.append(p / len(paths) * 1e3)
print(
    f"{len(paths)} photos, ms per photo (median of {rounds} passes): "
    f"read + decode {statistics.median(decode):.2f}, preprocess {statistics.median(prep):.2f}"
)
