"""The service catalogue: one YAML entry per classification service."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from shared.config import Settings

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CatalogueError(ValueError):
    """The catalogue file is invalid."""


@dataclass(frozen=True)
class Preprocess:
    """Deterministic inference preprocessing: resize shorter side, centre crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ServiceSpec:
    """One service: what model, which weights and labels, how to preprocess and answer."""

    name: str
    architecture: str                      # builder name, or "torchvision:<fn>"
    num_classes: int
    labels: str | None = None              # "torchvision:imagenet", a path, an s3:// URI, or None
    weights: str | None = None             # path, s3:// URI, "package:<module>", or None (unavailable)
    sha256: str | None = None              # optional pin of the weights file
    trusted_pickle: bool = False           # allow a full pickle (runs code); only with a matching sha256 pin
    backend: str = "torch"                 # torch | onnx | tensorrt
    artefact: str | None = None            # converted model (ONNX file / TensorRT engine) for those backends
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = 5
    unknown_threshold: float = 0.0         # top-1 score below this -> a single "Unknown" result
    seconds_per_request: float | None = None  # autoscaler's starting estimate
    description: str = ""

    def unavailable_reason(self, model_dir: str = "") -> str | None:
        """Why this service cannot serve (None when it can, as far as can be told without loading)."""
        source = self.artefact if self.backend in ("onnx", "tensorrt") else self.weights
        if not source:
            what = "artefact" if self.backend in ("onnx", "tensorrt") else "weights"
            return f"{what} not configured for service {self.name!r}"
        if source.startswith(("s3://", "package:")):
            return None
        path = resolve_path(source, model_dir)
        if not os.path.exists(path):
            what = "artefact" if self.backend in ("onnx", "tensorrt") else "weights"
            return f"{what} file not found: {path}"
        return None


@dataclass(frozen=True)
class Catalogue:
    """All services, by name, in file order."""

    services: dict[str, ServiceSpec]
    source: str = ""

    def __contains__(self, name: str) -> bool:
        return name in self.services

    def __getitem__(self, name: str) -> ServiceSpec:
        return self.services[name]

    def names(self) -> list[str]:
        """Every service name."""
        return list(self.services)

    def available(self, model_dir: str = "") -> list[str]:
        """Names of the services that can serve."""
        return [n for n, s in self.services.items() if s.unavailable_reason(model_dir) is None]


def resolve_path(path: str, model_dir: str = "") -> str:
    """A weights/labels path, relative ones resolved against model_dir."""
    path = os.path.expanduser(path)
    if model_dir and not os.path.isabs(path):
        return os.path.join(model_dir, path)
    return path


def default_catalogue_path() -> str:
    """The catalogue shipped with the package."""
    return str(resources.files("shared").joinpath("services.yaml"))


def load_catalogue(path: str | None = None) -> Catalogue:
    """Read and validate a catalogue YAML file."""
    path = path or default_catalogue_path()
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise CatalogueError(f"cannot read catalogue {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CatalogueError(f"catalogue {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise CatalogueError(f"catalogue {path}: needs a non-empty 'services' mapping")
    services = {name: _spec(name, entry, path) for name, entry in doc["services"].items()}
    return Catalogue(services=services, source=path)


def catalogue_for(settings: Settings) -> Catalogue:
    """The catalogue the settings point at."""
    return load_catalogue(settings.catalogue or None)


def check_trust(entry: dict, where: str) -> None:
    """trusted_pickle must be a boolean, and true only beside a pinned sha256 (64 hex digits)."""
    trusted = entry.get("trusted_pickle", False)
    if not isinstance(trusted, bool):
        raise CatalogueError(f"{where}: trusted_pickle must be true or false")
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha.strip())):
        raise CatalogueError(f"{where}: sha256 must be 64 hex digits")
    if trusted and not sha:
        raise CatalogueError(f"{where}: trusted_pickle needs a pinned sha256 of the weights file")


def parse_entry(name: Any, entry: Any, where: str) -> ServiceSpec:
    """One validated entry (the same rules as a catalogue file's); CatalogueError naming `where`."""
    return _spec(name, entry, where)


def _spec(name: Any, entry: Any, path: str) -> ServiceSpec:
    where = f"catalogue {path}, service {name!r}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CatalogueError(f"{where}: name must match {_NAME_RE.pattern}")
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: entry must be a mapping")
    known = set(ServiceSpec.__dataclass_fields__) - {"name"}
    unknown = set(entry) - known
    if unknown:
        raise CatalogueError(f"{where}: unknown keys {sorted(unknown)}")
    check_trust(entry, where)
    for key in ("architecture", "num_classes"):
        if key not in entry:
            raise CatalogueError(f"{where}: missing {key!r}")
    kw = dict(entry)
    pre = kw.pop("preprocess", None) or {}
    if not isinstance(pre, dict) or set(pre) - set(Preprocess.__dataclass_fields__):
        raise CatalogueError(f"{where}: preprocess must be a mapping of {sorted(Preprocess.__dataclass_fields__)}")
    for key in ("mean", "std"):
        if key in pre:
            if not (isinstance(pre[key], list) and len(pre[key]) == 3):
                raise CatalogueError(f"{where}: preprocess.{key} must be three numbers")
            pre[key] = tuple(float(x) for x in pre[key])
    if not isinstance(kw["num_classes"], int) or kw["num_classes"] < 1:
        raise CatalogueError(f"{where}: num_classes must be a positive integer")
    if kw.get("backend", "torch") not in ("torch", "onnx", "tensorrt"):
        raise CatalogueError(f"{where}: backend must be torch, onnx or tensorrt")
    threshold = kw.get("unknown_threshold", 0.0)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise CatalogueError(f"{where}: unknown_threshold must be in [0, 1]")
    return ServiceSpec(name=name, preprocess=Preprocess(**pre), **kw)
