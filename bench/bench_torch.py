#!/usr/bin/env python3
"""PyTorch + transformers fp32 side of `clipscope bench`, on the same model folder.

    python3 bench/bench_torch.py --model-dir DIR [--threads 2] [--iters 10]
    python3 bench/bench_torch.py --model-dir DIR --classify IMAGE|FOLDER --labels a,b,c,d,e
    python3 bench/bench_torch.py --model-dir DIR --embed-folder DIR [--batch 16] [--workers 1]

--bf16 runs the encoders under torch.autocast(dtype=torch.bfloat16); --device cuda runs on
the GPU (each timed call waits for the GPU to finish). The first form times the image encoder at batch 1 and 16 and the text encoder on five
prompts (median of --iters runs after one warm-up), as `clipscope bench` does. The
second is a whole one-shot classification (load, preprocess as OpenAI does, embed,
softmax, print), for timing as a whole process with hyperfine. The third embeds every
image of a folder the way PyTorch users batch a folder: a DataLoader over Pillow and
OpenAI's transforms (--workers processes decoding ahead, 0: none), batches of --batch,
L2-normalised features (bench/folder.sh times it at two folder sizes).
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--classify")
    ap.add_argument("--labels")
    ap.add_argument("--embed-folder")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast bf16")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    import contextlib

    device = torch.device(args.device)

    def autocast():
        if args.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def finish():
        """Wait for the GPU: its calls return before their work is done."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import CLIPModel, CLIPTokenizerFast

    t = time.perf_counter()
    model = CLIPModel.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval().to(device)
    tok = CLIPTokenizerFast.from_pretrained(args.model_dir)
    load_ms = (time.perf_counter() - t) * 1e3

    if args.classify or args.embed_folder:
        from PIL import Image
        from torchvision import transforms as T

        size = model.config.vision_config.image_size
        tf = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.Lambda(lambda im: im.convert("RGB")),
                T.ToTensor(),
                T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
            ]
        )

    if args.embed_folder:
        embed_folder(model, tf, args, device)
        return

    if args.classify:
        import os

        labels = args.labels.split(",")
        if os.path.isdir(args.classify):
            paths = sorted(os.path.join(args.classify, f) for f in os.listdir(args.classify))
        else:
            paths = [args.classify]
        with torch.no_grad():
            px = torch.stack([tf(Image.open(p)) for p in paths]).to(device)
            ids = tok([f"a photo of a {l}." for l in labels], padding=True, return_tensors="pt").to(device)
            with autocast():
                out = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=px)
            probs = out.logits_per_image.float().softmax(dim=-1).cpu()
        for path, row in zip(paths, probs.tolist()):
            print(path)
            for l, p in sorted(zip(labels, row), key=lambda x: -x[1]):
                print(f"{p * 100:6.2f}%  {l}")
        return

    def median_ms(f):
        f()
        finish()
        ts = []
        for _ in range(args.iters):
            t = time.perf_counter()
            f()
            finish()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    size = model.config.vision_config.image_size
    dtype = "bf16 autocast" if args.bf16 else "fp32"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model {args.model_dir}  device {where}  torch {torch.__version__} {dtype}  threads {torch.get_num_threads()}")
    print(f"{'load model':<36} {load_ms:>10.1f} ms")
    with torch.no_grad():
        for b in [int(x) for x in args.batch.split(",")]:
            px = torch.randn(b, 3, size, size, device=device)
            with autocast():
                ms = median_ms(lambda: model.get_image_features(pixel_values=px))
            print(f"{'image encoder, batch %d' % b:<36} {ms:>10.1f} ms {ms / b:>10.1f} ms/item")
        ids = tok([f"a photo of a {l}." for l in ["cat", "dog", "car", "tree", "house"]], padding=True, return_tensors="pt").to(device)
        with autocast():
            ms = median_ms(lambda: model.get_text_features(**ids))
        print(f"{'text encoder, 5 prompts':<36} {ms:>10.1f} ms {ms / 5:>10.1f} ms/item")


def embed_folder(model, tf, args, device):
    import os

    from PIL import Image

    exts = (".jpg", ".jpeg", ".png")
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(args.embed_folder)
        for f in names
        if f.lower().endswith(exts)
    )

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                return tf(im)

    batch = int(args.batch.split(",")[-1])
    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, num_workers=args.workers)
    rows = 0
    with torch.no_grad():
        for px in loader:
            f = model.get_image_features(pixel_values=px.to(device))
            if not torch.is_tensor(f):  # transformers 5 returns the outputs, projected
                f = f.pooler_output
            f = f / f.norm(dim=-1, keepdim=True)
            rows += f.cpu().shape[0]
    print(f"embedded {rows} images")


if __name__ == "__main__":
    main()
