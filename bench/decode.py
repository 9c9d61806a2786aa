"""Decode + preprocess cost per image, by decoder: the worker's choice of JPEG decode, measured.

    PYTHONPATH=. .venv/bin/python bench/decode.py [--repeat 30] [--extra-path DIR]

For each bundled photo (chelsea, coffee, astronaut, rocket) as bundled and re-encoded at 2x and 4x (a
phone's photo), on one thread (the pinned worker's core), the median milliseconds (round robin) of decode plus imagenet's
preprocessing (resize, crop, normalise) for:
- full: torchvision.io's decode_jpeg (libjpeg-turbo) of every pixel, the worker's path before draft mode;
- draft: Pillow's draft mode (libjpeg's DCT scaling to 1/2, 1/4, 1/8), the worker's path now for photos at
  least twice the model's input (worker/models/engine.py);
- simplejpeg: its DCT-scaled decode (min_height/min_width), when importable (it is not a dependency:
  --extra-path DIR names where it was pip-installed with --target to measure it).
The top-1 of each path is checked against full's. Results: bench/results/decode.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from shared.config import Settings  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photo(name: str, scale: int) -> bytes:
    """A bundled photo, re-encoded at `scale` times its size (quality 92) when scale > 1."""
    with open(os.path.join(ROOT, "classifycloud", "samples", f"{name}.jpg"), "rb") as fh:
        data = fh.read()
    if scale == 1:
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    img.resize((img.width * scale, img.height * scale), Image.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--extra-path", default="", help="a directory holding simplejpeg (pip install --target)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "decode.json"))
    args = p.parse_args(argv)
    if args.extra_path:
        sys.path.append(args.extra_path)
    torch.set_num_threads(1)
    from bench.load_test import device, versions
    from shared.catalogue import load_catalogue
    from worker.models.engine import decode_jpeg_draft, decode_jpeg_tensor, draft_size
    from worker.models.registry import ModelRegistry
    settings = Settings(device="cpu", metrics_enabled=False, services=("imagenet",))
    handler = ModelRegistry(load_catalogue(), settings).load().get("imagenet")
    pre = handler.spec.preprocess
    paths = {"full": lambda d: decode_jpeg_tensor(d),
             "draft": lambda d: decode_jpeg_draft(d, pre) if draft_size(pre, *Image.open(io.BytesIO(d)).size)
             else decode_jpeg_tensor(d)}
    try:
        import simplejpeg

        def sj(d: bytes) -> torch.Tensor:
            h, w = simplejpeg.decode_jpeg_header(d)[:2]
            size = draft_size(pre, w, h)
            arr = simplejpeg.decode_jpeg(d, "RGB", min_height=size[1] if size else 0, min_width=size[0] if size else 0)
            return torch.from_numpy(arr).permute(2, 0, 1)
        paths["simplejpeg"] = sj
        sj_version = simplejpeg.__version__
    except ImportError:
        sj_version = None
    rows = []
    for scale in (1, 2, 4):
        for name in PHOTOS:
            data = photo(name, scale)
            row = {"photo": name, "scale": scale, "size": list(Image.open(io.BytesIO(data)).size), "bytes": len(data)}
            top, times = {}, {path: [] for path in paths}
            with torch.inference_mode():
                for path, decode in paths.items():
                    top[path] = int(handler.infer(handler.preprocess_tensor(decode(data))[None]).argmax())
                for _ in range(args.repeat):   # round robin, median: a shared machine's load hits all paths alike
                    for path, decode in paths.items():
                        t0 = time.perf_counter()
                        handler.preprocess_tensor(decode(data))
                        times[path].append((time.perf_counter() - t0) * 1000)
            for path in paths:
                row[f"{path}_ms"] = round(statistics.median(times[path]), 2)
            row["top1"] = top
            row["top1_same"] = len(set(top.values())) == 1
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()))
    run = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device(),
           "versions": {**versions(), "simplejpeg": sj_version}, "load_avg": os.getloadavg(),
           "threads": 1, "repeat": args.repeat, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(run, fh, indent=2)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
