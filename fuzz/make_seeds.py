"""Seed files for the fuzz targets that the repository's fixtures do not already give.

Run from the repository root: python3 fuzz/make_seeds.py (needs Pillow and NumPy).
The odd pictures come from tests/fixtures/odd (tests/fixtures/make_odd_images.py).
"""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

SEEDS = Path("fuzz/seeds")


def images():
    out = SEEDS / "image"
    out.mkdir(parents=True, exist_ok=True)
    for f in Path("tests/fixtures/odd").iterdir():
        if f.stat().st_size > 0:
            shutil.copy(f, out / f.name)
    rng = np.random.default_rng(0)
    pic = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    for name, fmt, kw in [
        ("small.bmp", "BMP", {}),
        ("small.webp", "WEBP", {"quality": 50}),
        ("lossless.webp", "WEBP", {"lossless": True}),
        ("small.ppm", "PPM", {}),
        ("small.ico", "ICO", {"sizes": [(7, 7)]}),
        ("progressive.jpg", "JPEG", {"progressive": True}),
        ("interlaced.png", "PNG", {"interlace": 1}),
        ("small.gif", "GIF", {}),
        ("small.tga", "TGA", {}),
    ]:
        pic.save(out / name, fmt, **kw)
    pic.convert("L").save(out / "small.pgm", "PPM")
    pic.convert("1").save(out / "small.pbm", "PPM")


def safetensors_bytes(tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        dtype = {"float32": "F32", "float16": "F16"}[str(arr.dtype)]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors():
    out = SEEDS / "safetensors"
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(Path("tests/fixtures/tiny-clip/config.json").read_text())
    small = {
        "logit_scale": np.array(2.6592, dtype=np.float32),
        "text_projection.weight": np.zeros((cfg["projection_dim"], cfg["text_config"]["hidden_size"]), np.float16),
    }
    (out / "partial.safetensors").write_bytes(safetensors_bytes(small))
    (out / "empty-header.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    full = Path("tests/fixtures/tiny-clip/model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", full[:8])
    # The real header of the fixture model with its data cut off: a truncated file.
    (out / "truncated.safetensors").write_bytes(full[: 8 + n + 64])


def checkpoints():
    out = SEEDS / "checkpoint_json"
    out.mkdir(parents=True, exist_ok=True)
    for f in Path("fuzz/seeds/checkpoint_json").glob("*.json"):
        json.loads(f.read_text())


if __name__ == "__main__":
    images()
    safetensors()
    checkpoints()
