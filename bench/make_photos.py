#!/usr/bin/env python3
"""N JPEG photos at camera-like sizes (640x480 to 1024x683, quality 85-94), each file
different, made from the fixture photos: the input of bench/folder.sh and of the
decoding benchmarks (examples/decode_bench.rs, bench/decode_pillow.py).

    python3 bench/make_photos.py OUT N
"""
import os
import sys

from PIL import Image

out, n = sys.argv[1], int(sys.argv[2])
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "images")
src = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]
photos = [Image.open(os.path.join(here, s)).convert("RGB") for s in src]
sizes = [(640, 480), (800, 533), (500, 375), (1024, 683)]
os.makedirs(out, exist_ok=True)
for i in range(n):
    im = photos[i % len(photos)].resize(sizes[i % len(sizes)], Image.BICUBIC)
    im.save(os.path.join(out, f"photo{i:04d}.jpg"), quality=85 + i % 10)
