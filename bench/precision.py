#!/usr/bin/env python3
"""The effect of `--precision bf16|f16` on embeddings and labels, against f32.

    python3 bench/precision.py MODEL_DIR [IMAGE_OR_DIR ...]

Embeds the images (default: tests/fixtures/images) and ten label prompts with
`clipscope embed` at each precision, then prints, per precision, the smallest and mean
cosine between its embeddings and f32's (images and texts) and how many images keep
f32's top-1 label.
"""
import json
import os
import subprocess
import sys

import numpy as np

LABELS = "cat,dog,astronaut,rocket,cup of coffee,camera,person,car,tree,house"


def embed(bin, model, precision, args):
    out = subprocess.run(
        [bin, "embed", *args, "--model-dir", model, "--no-cache", "--precision", precision, "--format", "json", "-q"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return np.array([item["embedding"] for item in json.loads(out)["items"]])


def main():
    model, images = sys.argv[1], sys.argv[2:] or ["tests/fixtures/images"]
    bin = os.environ.get("CLIPSCOPE_BIN", "target/release/clipscope")
    texts = ["--text", LABELS, "--template", "a photo of a {}."]
    ref_i, ref_t = embed(bin, model, "f32", images), embed(bin, model, "f32", texts)
    top = (ref_i @ ref_t.T).argmax(1)
    print(f"{len(ref_i)} images, {len(ref_t)} prompts; cosine against f32")
    for p in ["bf16", "f16"]:
        e_i, e_t = embed(bin, model, p, images), embed(bin, model, p, texts)
        ci, ct = (e_i * ref_i).sum(1), (e_t * ref_t).sum(1)
        same = int(((e_i @ e_t.T).argmax(1) == top).sum())
        print(
            f"{p}: images min {ci.min():.6f} mean {ci.mean():.6f}; "
            f"texts min {ct.min():.6f} mean {ct.mean():.6f}; top-1 as f32 {same}/{len(top)}"
        )


if __name__ == "__main__":
    main()
