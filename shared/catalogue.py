"""The service catalogue: one YAML entry per classification service."""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from typing import Any

import yaml

from shared import kinds
from shared.config import Settings
from shared.versions import BASE_VERSION, VersionError, check_version

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
QUEUE_SUFFIXES = ("-dlq",)   # what shared/naming.py appends to a service's queue names
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("torch", "onnx", "tensorrt", "keras", "dlib", "auto")


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
    mode: str = "crop"                     # crop: shorter side to `resize`, centre crop | squash: to crop x crop


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
    backend: str = "torch"                 # torch | onnx | tensorrt | auto (fastest measured at load)
    artefact: str | None = None            # converted model (ONNX file / TensorRT engine) for those backends
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = 5
    unknown_threshold: float = 0.0         # top-1 score below this -> a single "Unknown" result
    seconds_per_request: float | None = None  # autoscaler's starting estimate
    description: str = ""
    kind: str = "classifier"               # one of shared/kinds/ (classifier: top-k + Unknown, score, ...)
    layout: str = "nchw"                   # input layout an artefact takes: nchw | nhwc
    outputs: str = "logits"                # logits (softmaxed here) | probabilities | regression
    threshold: float = 0.5                 # score kind: the verdict's threshold (>= is positive)
    labels_note: str = ""                  # why labels are what they are (e.g. class ids: order unknown)
    note: str = ""                         # added to the unavailable reason (e.g. why no weights exist)
    options: dict = field(default_factory=dict, hash=False)  # kind-specific settings (see docs/SERVICES.md)
    derived_from: str | None = None        # a label subset of this service's model (same forward pass)
    classes: tuple[int, ...] = ()          # derived: the parent's class indices this service answers
    min_share: float = 0.0                 # derived: Unknown when the subset holds less of the probability

    def unavailable_reason(self, model_dir: str = "") -> str | None:
        """Why this service cannot serve (None when it can, as far as can be told without loading)."""
        reason = self._missing_source(model_dir)
        if reason and self.note:
            return f"{reason} ({self.note})"
        return reason

    def _missing_source(self, model_dir: str) -> str | None:
        source = self.artefact if self.backend in ("onnx", "tensorrt") else self.weights
        if not source:
            what = "artefact" if self.backend in ("onnx", "tensorrt") else "weights"
            return f"{what} not configured for service {self.name!r}"
        if source.startswith("package:") and "/" in source:
            return package_file_problem(source.split(":", 1)[1])
        if source.startswith(("s3://", "package:")):
            return None
        path = resolve_path(source, model_dir)
        if not os.path.exists(path):
            what = "artefact" if self.backend in ("onnx", "tensorrt") else "weights"
            return f"{what} file not found: {path}"
        return None


class ServiceLookup:
    """Lookups over a `services` mapping (the packaged catalogue and the live one share them)."""

    services: dict[str, ServiceSpec]

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


@dataclass(frozen=True)
class Catalogue(ServiceLookup):
    """All services, by name, in file order."""

    services: dict[str, ServiceSpec]
    source: str = ""
    versions: dict = field(default_factory=dict, hash=False)  # service -> {version: ServiceSpec} (not v1)


def split_package_source(ref: str) -> tuple[str, str]:
    """'<distribution>/<path in it>' -> (distribution, path)."""
    dist, _, rel = ref.partition("/")
    if not dist or not rel:
        raise CatalogueError(f"package source {ref!r} must be package:<distribution>/<path inside it>")
    return dist, rel


def package_file(ref: str) -> str:
    """The installed path of a file a distribution ships ('<distribution>/<path>'); raises FileNotFoundError."""
    dist, rel = split_package_source(ref)
    path, problem = _locate(dist, rel)
    if problem:
        raise FileNotFoundError(problem)
    return path


@functools.lru_cache(maxsize=64)
def _locate(dist: str, rel: str) -> tuple[str, str]:
    # Cached: the web checks availability on every request, and a process's installed packages do not change.
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return "", f"package {dist!r} is not installed"
    for f in files:
        if str(f) == rel:
            path = str(f.locate())
            return (path, "") if os.path.exists(path) else ("", f"package {dist!r}: {path} is missing")
    return "", f"package {dist!r} ships no file {rel!r}"


def package_file_problem(ref: str) -> str | None:
    """None when the packaged file is installed, else why not (read from metadata; nothing imported)."""
    try:
        package_file(ref)
    except (FileNotFoundError, CatalogueError) as exc:
        return str(exc)
    return None


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
    entries = doc["services"]
    entries, raw_versions = split_versions(entries, path)
    services = {name: _spec(name, entry, path) for name, entry in entries.items()
                if not (isinstance(entry, dict) and "derived_from" in entry)}
    for name, entry in entries.items():  # derived services after every model service: they copy their parent
        if isinstance(entry, dict) and "derived_from" in entry:
            services[name] = derive(name, entry, services, f"catalogue {path}, service {name!r}")
    versions = {svc: {v: _spec(svc, entry, f"{path} (version {v})") for v, entry in vs.items()}
                for svc, vs in raw_versions.items()}
    return Catalogue(services={n: services[n] for n in entries}, source=path, versions=versions)


def split_versions(entries: dict, path: str) -> tuple[dict, dict]:
    """(entries without `versions:`, {service: {version: full raw entry}}): a version inherits what it omits."""
    plain, versions = {}, {}
    for name, entry in entries.items():
        if not (isinstance(entry, dict) and "versions" in entry):
            plain[name] = entry
            continue
        base = {k: v for k, v in entry.items() if k != "versions"}
        plain[name] = base
        if not isinstance(entry["versions"], dict) or "derived_from" in entry:
            raise CatalogueError(f"catalogue {path}, service {name!r}: versions must be a mapping "
                                 "(and a derived service has none)")
        for version, over in entry["versions"].items():
            try:
                check_version(version)
            except VersionError as exc:
                raise CatalogueError(f"catalogue {path}, service {name!r}: {exc}") from None
            if version == BASE_VERSION or not isinstance(over, dict):
                raise CatalogueError(f"catalogue {path}, service {name!r}: version {version!r} must be a mapping "
                                     f"and not {BASE_VERSION} (the entry itself)")
            versions.setdefault(name, {})[version] = {**base, **over}
    return plain, versions


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


def check_name(name: Any, where: str) -> None:
    """A service name: the pattern, and never one whose queues are another service's dead-letter queues."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CatalogueError(f"{where}: name must match {_NAME_RE.pattern}")
    if name.endswith(QUEUE_SUFFIXES):   # <svc>-dlq's request queue would be <svc>'s DLQ (shared/naming.py)
        raise CatalogueError(f"{where}: a name may not end with {' or '.join(QUEUE_SUFFIXES)} (a queue suffix)")


def _spec(name: Any, entry: Any, path: str) -> ServiceSpec:
    where = f"catalogue {path}, service {name!r}"
    check_name(name, where)
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: entry must be a mapping")
    if "derived_from" in entry:
        raise CatalogueError(f"{where}: derived services are declared in the packaged catalogue only")
    known = set(ServiceSpec.__dataclass_fields__) - {"name", "classes", "min_share"}
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
    if kw.get("backend", "torch") not in BACKENDS:
        raise CatalogueError(f"{where}: backend must be one of {', '.join(BACKENDS)}")
    if kw.get("backend") == "keras" and not str(kw.get("weights") or "").endswith(".keras"):
        # Keras picks its loader by file name: .h5 takes the legacy path, where safe_mode is ignored
        raise CatalogueError(f"{where}: backend keras takes only a .keras weights file (no .h5: it can run code)")
    for key, allowed in (("kind", kinds.names()), ("layout", ("nchw", "nhwc")),
                         ("outputs", ("logits", "probabilities", "regression"))):
        if key in kw and kw[key] not in allowed:
            raise CatalogueError(f"{where}: {key} must be one of {', '.join(allowed)}")
    if pre.get("mode", "crop") not in ("crop", "squash"):
        raise CatalogueError(f"{where}: preprocess.mode must be crop or squash")
    if not isinstance(kw.get("options", {}), dict):
        raise CatalogueError(f"{where}: options must be a mapping")
    if not isinstance(kw.get("threshold", 0.5), (int, float)):
        raise CatalogueError(f"{where}: threshold must be a number")
    threshold = kw.get("unknown_threshold", 0.0)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise CatalogueError(f"{where}: unknown_threshold must be in [0, 1]")
    return ServiceSpec(name=name, preprocess=Preprocess(**pre), **kw)


DERIVED_KEYS = {"derived_from", "classes", "min_share", "description", "top_k", "unknown_threshold",
                "seconds_per_request", "kind", "labels_note"}


def class_indices(value: Any, num_classes: int, where: str) -> tuple[int, ...]:
    """[i, "a-b", ...] -> sorted unique indices, each below num_classes."""
    if not isinstance(value, list) or not value:
        raise CatalogueError(f"{where}: classes must be a non-empty list of indices or 'a-b' ranges")
    out: set[int] = set()
    for item in value:
        if isinstance(item, bool):
            raise CatalogueError(f"{where}: classes: {item!r} is not an index")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and re.fullmatch(r"\d+-\d+", item.strip()):
            lo, hi = (int(x) for x in item.split("-"))
        else:
            raise CatalogueError(f"{where}: classes: {item!r} is neither an index nor an 'a-b' range")
        if not 0 <= lo <= hi < num_classes:
            raise CatalogueError(f"{where}: classes: {item!r} lies outside the parent's 0..{num_classes - 1}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def derive(name: Any, entry: dict, services: dict[str, ServiceSpec], where: str) -> ServiceSpec:
    """A label-subset service: the parent's model, weights and preprocessing, answering `classes` only."""
    check_name(name, where)
    unknown = set(entry) - DERIVED_KEYS
    if unknown:
        raise CatalogueError(f"{where}: a derived service takes only {sorted(DERIVED_KEYS)}; "
                             f"not {sorted(unknown)} (the model is the parent's)")
    parent = services.get(entry["derived_from"])
    if parent is None or parent.derived_from or parent.kind != "classifier":
        raise CatalogueError(f"{where}: derived_from must name a model service of kind classifier "
                             f"(got {entry['derived_from']!r})")
    if entry.get("kind", "classifier") != "classifier":
        raise CatalogueError(f"{where}: a derived service is a classifier")
    share = entry.get("min_share", 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise CatalogueError(f"{where}: min_share must be in [0, 1]")
    threshold = entry.get("unknown_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise CatalogueError(f"{where}: unknown_threshold must be in [0, 1]")
    top_k = entry.get("top_k", parent.top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise CatalogueError(f"{where}: top_k must be a positive integer")
    classes = class_indices(entry.get("classes"), parent.num_classes, where)
    return replace(parent, name=name, derived_from=parent.name, classes=classes, num_classes=len(classes),
                   min_share=float(share), unknown_threshold=float(threshold), top_k=top_k,
                   description=str(entry.get("description", "")), labels_note=str(entry.get("labels_note", "")),
                   seconds_per_request=entry.get("seconds_per_request", parent.seconds_per_request), note="")
