"""Services from S3 (models/<service>/entry.yaml) merged over the packaged catalogue, read live."""
from __future__ import annotations

import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field

import yaml

from shared import kinds, naming
from shared.catalogue import Catalogue, CatalogueError, ServiceLookup, ServiceSpec, catalogue_for, parse_entry
from shared.config import Settings
from shared.traffic import is_version_file

log = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 64 * 1024
_SOURCE_KEYS = ("weights", "labels", "artefact")
_PASS_THROUGH = ("package:", "builtin:", "torchvision:")
# Backends whose model files can carry code (Keras' legacy H5 path ignores safe_mode: CVE-2025-9905):
# served only from the packaged catalogue, which ships with the AMI.
_PACKAGED_ONLY_BACKENDS = ("keras",)


@dataclass(frozen=True)
class S3Entry:
    """One service read from S3, and the (key, ETag) pairs of its folder: any upload there changes it."""

    spec: ServiceSpec
    fingerprint: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    """The merged catalogue, the S3 services' fingerprints, and the S3 entries that were refused."""

    catalogue: Catalogue
    fingerprints: dict[str, tuple] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def entry_uri(settings: Settings, service: str) -> str:
    """Where a service's entry lives."""
    return f"s3://{settings.bucket_name}/{naming.model_key(service, naming.MODEL_ENTRY)}"


def parse_s3_entry(service: str, text: str | bytes, bucket: str) -> ServiceSpec:
    """A validated spec from entry.yaml; relative sources resolve inside s3://bucket/models/<service>/."""
    where = f"s3://{bucket}/{naming.model_key(service, naming.MODEL_ENTRY)}"
    doc = entry_doc(text, where)
    for key in _SOURCE_KEYS:
        if doc.get(key) is not None:
            doc[key] = _source(doc[key], key, service, bucket, where)
    confine_options(doc, service, bucket, where)
    return parse_entry(service, doc, where)


def entry_doc(text: str | bytes, where: str) -> dict:
    """An S3 entry's YAML as a mapping (a service's entry.yaml, or a version's: shared/version_entries.py)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise CatalogueError(f"{where}: must be a mapping of catalogue keys (architecture, num_classes, ...)")
    if doc.get("trusted_pickle"):
        # whoever can write the prefix could pin the sha256 of their own pickle: the opt-in stays with the AMI's
        raise CatalogueError(f"{where}: trusted_pickle is accepted only in the packaged catalogue, not from S3")
    if doc.get("backend") in _PACKAGED_ONLY_BACKENDS:
        raise CatalogueError(f"{where}: backend {doc['backend']!r} is accepted only in the packaged catalogue, "
                             "not from S3 (its model files can run code)")
    return dict(doc)


def confine_options(doc: dict, service: str, bucket: str, where: str) -> None:
    """Options that name files (the kind's file_options, shared/kinds/) follow the source fields' confinement."""
    if isinstance(doc.get("options"), dict):
        doc["options"] = dict(doc["options"])
        for key in kinds.file_options(doc.get("kind", "classifier")):
            if doc["options"].get(key) is not None:
                doc["options"][key] = _source(doc["options"][key], f"options.{key}", service, bucket, where)


def _source(value: object, key: str, service: str, bucket: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(f"{where}: {key} must be a non-empty string")
    value = value.strip()
    if value.startswith(_PASS_THROUGH):
        rest = value.split(":", 1)[1]
        if not rest or rest.startswith(("/", "~")) or "\\" in rest or "://" in rest or ".." in rest.split("/"):
            raise CatalogueError(f"{where}: {key} {value!r} must name a file inside the package or built-ins "
                                 "(no '..', no absolute path)")
        return value
    models = f"s3://{bucket}/{naming.models_prefix()}"
    if value.startswith("s3://"):
        if not value.startswith(models) or ".." in value.split("/"):
            raise CatalogueError(f"{where}: {key} {value!r} must lie under {models}")
        return value
    # a relative name: a file beside entry.yaml; never a path on the worker's disk
    if "://" in value or value.startswith(("/", "~", "\\")) or ".." in value.replace("\\", "/").split("/"):
        raise CatalogueError(f"{where}: {key} {value!r} must be a file name under models/{service}/ "
                             f"(or {models}..., package:, builtin:)")
    return f"s3://{bucket}/{naming.model_key(service, posixpath.normpath(value))}"


class S3Entries:
    """Lists models/ and reads each service's entry.yaml; an entry is re-read only when its folder changed."""

    def __init__(self, settings: Settings, s3=None):
        self.settings = settings
        self._s3 = s3
        self._parsed: dict[str, tuple[tuple, ServiceSpec | None, str | None]] = {}

    @property
    def s3(self):
        """The S3 client (created on first use)."""
        if self._s3 is None:
            from shared.aws import client
            self._s3 = client("s3", self.settings)
        return self._s3

    def read(self) -> tuple[dict[str, S3Entry], dict[str, str]]:
        """({service: S3Entry}, {service: why its entry was refused}); raises when the listing fails."""
        bucket = self.settings.bucket_name
        folders: dict[str, list[tuple[str, str]]] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=naming.models_prefix())
        for page in pages:
            for obj in page.get("Contents", []):
                service, _, rest = obj["Key"][len(naming.models_prefix()):].partition("/")
                if service and rest and not is_version_file(rest):  # versions: shared/version_entries.py
                    folders.setdefault(service, []).append((obj["Key"], str(obj.get("ETag", "")).strip('"')))
        entries: dict[str, S3Entry] = {}
        errors: dict[str, str] = {}
        for service, objects in sorted(folders.items()):
            entry_key = naming.model_key(service, naming.MODEL_ENTRY)
            if entry_key not in dict(objects):
                continue  # weights without an entry (yet): an upload in progress, or files of a packaged service
            fingerprint = tuple(sorted(objects))
            cached = self._parsed.get(service)
            if cached is None or cached[0] != fingerprint:
                cached = (fingerprint, *self._parse(service, entry_key))
                self._parsed[service] = cached
            _, spec, error = cached
            if spec is not None:
                entries[service] = S3Entry(spec, fingerprint)
            else:
                errors[service] = error
        for gone in set(self._parsed) - set(folders):
            del self._parsed[gone]
        return entries, errors

    def _parse(self, service: str, key: str) -> tuple[ServiceSpec | None, str | None]:
        bucket = self.settings.bucket_name
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
            if int(obj.get("ContentLength") or 0) > MAX_ENTRY_BYTES:
                raise CatalogueError(f"s3://{bucket}/{key} is larger than {MAX_ENTRY_BYTES} bytes")
            spec = parse_s3_entry(service, obj["Body"].read(MAX_ENTRY_BYTES + 1), bucket)
        except CatalogueError as exc:
            log.error("service %s: S3 entry refused: %s", service, exc)
            return None, str(exc)
        except Exception as exc:  # a vanished or unreadable entry: reported, the others go on
            log.error("service %s: S3 entry s3://%s/%s unreadable: %s", service, bucket, key, exc)
            return None, f"s3://{bucket}/{key} unreadable: {type(exc).__name__}: {exc}"
        return spec, None


def merge(packaged: Catalogue, entries: dict[str, S3Entry], errors: dict[str, str] | None = None,
          replace_packaged: bool = False) -> Snapshot:
    """Packaged services, then S3 ones. An S3 entry may fill a packaged placeholder (no weights or artefact
    configured), but one naming a packaged service that has its model is refused (reported in errors)
    unless the operator allows S3 to replace packaged services (catalogue_s3_replaces_packaged)."""
    services = dict(packaged.services)
    errors = dict(errors or {})
    taken = {}
    for name, entry in entries.items():
        own = packaged.services.get(name)
        if own is not None and (own.weights or own.artefact) and not replace_packaged:
            log.error("service %s: S3 entry refused: it names a packaged service", name)
            errors[name] = (f"names the packaged service {name!r}; S3 entries may replace packaged services "
                            "only with CLASSIFYCLOUD_CATALOGUE_S3_REPLACES_PACKAGED=true")
            continue
        if name in services and services[name] != entry.spec:
            log.warning("service %s: the S3 entry replaces the packaged one (operator setting)", name)
        services[name] = entry.spec
        taken[name] = entry.fingerprint
    return Snapshot(Catalogue(services=services, source=f"{packaged.source} + s3 models/"), taken, errors)


class LiveCatalogue(ServiceLookup):
    """A Catalogue look-alike for the web and the autoscaler: packaged + S3, re-read at most every ttl seconds.

    A failed S3 read keeps the last good snapshot (the packaged catalogue at first): S3 trouble never
    takes services away.
    """

    def __init__(self, settings: Settings, packaged: Catalogue | None = None, s3=None, clock=time.monotonic):
        self.settings = settings
        self.packaged = packaged or catalogue_for(settings)
        self.reader = S3Entries(settings, s3)
        self.clock = clock
        self.ttl = settings.catalogue_ttl_s
        self._snapshot = Snapshot(self.packaged)
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """The current snapshot, refreshed first when older than the TTL (one thread refreshes, others go on)."""
        now = self.clock()
        if (self._read_at is None or now - self._read_at >= self.ttl) and self._lock.acquire(blocking=False):
            try:
                self._read_at = now
                entries, errors = self.reader.read()
                self._snapshot = merge(self.packaged, entries, errors, self.settings.catalogue_s3_replaces_packaged)
            except Exception as exc:
                log.warning("catalogue: S3 entries unreadable (%s); keeping %d services",
                            exc, len(self._snapshot.catalogue.services))
            finally:
                self._lock.release()
        return self._snapshot

    # --- the Catalogue interface --------------------------------------------------
    @property
    def services(self) -> dict[str, ServiceSpec]:
        """Every service, by name."""
        return self.snapshot().catalogue.services

    @property
    def source(self) -> str:
        """Where the services come from."""
        return self.snapshot().catalogue.source

    @property
    def errors(self) -> dict[str, str]:
        """S3 entries that were refused, with the reason."""
        return self.snapshot().errors
