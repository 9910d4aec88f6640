#!/usr/bin/env python3
"""The effect of `--precision bf16|f16` on embeddings and labels, against f32.

    python3 bench/precision.py MODEL_DIR [IMAGE_OR_DIR ...]
    python3 bench/precision.py MODEL_DIR --device cuda --ref-device cpu   # a `cuda` build

Embeds the images (default: tests/fixtures/images) and ten label prompts with
`clipscope embed` at each precision, then prints, per precision, the smallest and mean
cosine between its embeddings and f32's (images and texts) and how many images keep
f32's top-1 label. With --ref-device the f32 reference runs on that device and the
others on --device, f32 among them: a GPU's f32 against the CPU's.
"""
import argparse
import json
import os
import subprocess

import numpy as np

LABELS = "cat,dog,astronaut,rocket,cup of coffee,camera,person,car,tree,house"


def embed(bin, model, precision, args, device):
    out = subprocess.run(
        [bin, "embed", *args, "--model-dir", model, "--no-cache", "--precision", precision, "--format", "json", "-q", "--device", device],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return np.array([item["embedding"] for item in json.loads(out)["items"]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images", nargs="*", default=["tests/fixtures/images"])
    ap.add_argument("--device", default="cpu", help="device of the runs compared")
    ap.add_argument("--ref-device", help="device of the f32 reference (default: --device)")
    args = ap.parse_args()
    ref_device = args.ref_device or args.device
    bin = os.environ.get("CLIPSCOPE_BIN", "target/release/clipscope")
    texts = ["--text", LABELS, "--template", "a photo of a {}."]
    ref_i = embed(bin, args.model, "f32", args.images, ref_device)
    ref_t = embed(bin, args.model, "f32", texts, ref_device)
    top = (ref_i @ ref_t.T).argmax(1)
    print(f"{len(ref_i)} images, {len(ref_t)} prompts; cosine against f32 on {ref_device}")
    others = ["bf16", "f16"] if ref_device == args.device else ["f32", "bf16", "f16"]
    for p in others:
        e_i = embed(bin, args.model, p, args.images, args.device)
        e_t = embed(bin, args.model, p, texts, args.device)
        ci, ct = (e_i * ref_i).sum(1), (e_t * ref_t).sum(1)
        same = int(((e_i @ e_t.T).argmax(1) == top).sum())
        print(
            f"{p} on {args.device}: images min {ci.min():.6f} mean {ci.mean():.6f}; "
            f"texts min {ct.min():.6f} mean {ct.mean():.6f}; top-1 as f32 {same}/{len(top)}"
        )


if __name__ == "__main__":
    main()
