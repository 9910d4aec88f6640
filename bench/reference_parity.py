#!/usr/bin/env python3
"""clipscope's embeddings on any device against transformers' reference.

    python3 bench/reference_parity.py MODEL_DIR [--device cuda] [--precision f32]

MODEL_DIR is a folder made by `tests/fixtures/make_fixtures.py --full`, whose
reference.json holds what transformers' CLIPModel computed on the CPU for the fixture
images and prompts. Embeds the same images and prompts with `clipscope embed` on
--device and prints the smallest cosine and largest absolute difference against the
reference for images and texts; exits 1 when a cosine is below --min-cosine.
"""
import argparse
import json
import os
import sys

import numpy as np

from precision import embed  # bench/precision.py, beside this file


def compare(what, ours, ref):
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    diff = np.abs(ours - ref).max()
    print(f"{what}: {len(ref)}, smallest cosine {cos.min():.8f}, largest |difference| {diff:.2e}")
    return cos.min()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="f32")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    args = ap.parse_args()
    bin = os.environ.get("CLIPSCOPE_BIN", "target/release/clipscope")
    ref = json.load(open(os.path.join(args.model, "reference.json")))
    image_dir = "tests/fixtures/images"
    files = [os.path.join(image_dir, os.path.basename(i["file"])) for i in ref["images"]]
    ours_i = embed(bin, args.model, args.precision, files, args.device)
    ref_i = np.array([i["image_embedding"] for i in ref["images"]])
    ours_t = embed(bin, args.model, args.precision, ["--text", ",".join(ref["prompts"])], args.device)
    ref_t = np.array(ref["text_embeddings"])
    print(f"clipscope on {args.device} ({args.precision}) against transformers on the CPU (f32)")
    worst = min(compare("images", ours_i, ref_i), compare("texts", ours_t, ref_t))
    sys.exit(0 if worst >= args.min_cosine else 1)


if __name__ == "__main__":
    main()
