"""The versions of a service: v1 (its own entry), the packaged `versions:`, and S3's models/<service>/versions/<v>/.

S3 versions live under their service's folder but apart from its entry.yaml. A version is a way to
answer the service's requests, so the rule for S3 entries (shared/live_catalogue.py) applies to it too:
an S3 version of a packaged service that has its model is refused (reported, never loaded) unless the
operator sets catalogue_s3_replaces_packaged. Otherwise a `models/*` publisher could send every request
of a packaged service to its own model with versions/<v>/entry.yaml and traffic.json.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from shared import naming
from shared.catalogue import (
    Catalogue,
    CatalogueError,
    ServiceSpec,
    catalogue_for,
    parse_entry,
)
from shared.config import Settings
from shared.live_catalogue import _source as source_of
from shared.live_catalogue import confine_options, entry_doc
from shared.traffic import VERSIONS_DIR
from shared.versions import BASE_VERSION, VersionError, check_version

log = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 64 * 1024
_SOURCE_KEYS = ("weights", "labels", "artefact")
_PASS_THROUGH = ("package:", "builtin:", "torchvision:", "s3://")


@dataclass(frozen=True)
class VersionEntry:
    """One version's spec (named like its service), where it came from, and what its files look like now."""

    service: str
    version: str
    spec: ServiceSpec | None
    origin: str                        # "catalogue" | "packaged" | "s3"
    fingerprint: tuple = ()            # S3: the (key, ETag) pairs of versions/<v>/
    error: str | None = None           # why an S3 entry was refused


def version_prefix(service: str, version: str) -> str:
    """S3 prefix of one version's files."""
    return naming.model_key(service, f"{VERSIONS_DIR}/{version}/")


def parse_version_entry(service: str, version: str, text: str | bytes, bucket: str) -> ServiceSpec:
    """A validated spec from versions/<v>/entry.yaml; relative sources resolve beside it, in S3."""
    where = f"s3://{bucket}/{version_prefix(service, version)}{naming.MODEL_ENTRY}"
    doc = entry_doc(text, where)   # the S3 entries' own rules (YAML mapping, no trusted_pickle)
    for key in _SOURCE_KEYS:
        value = doc.get(key)
        if isinstance(value, str) and value.strip() and "://" not in value and not value.strip().startswith(
                (*_PASS_THROUGH, "/", "~", "\\")):
            value = f"{VERSIONS_DIR}/{version}/{value.strip()}"  # a file beside this entry.yaml
        if value is not None:
            doc[key] = source_of(value, key, service, bucket, where)  # the S3 entries' own rules
    confine_options(doc, service, bucket, where)
    return parse_entry(service, doc, where)


class VersionEntries:
    """Lists every version of every service; S3 entries are re-parsed only when their folder changed."""

    def __init__(self, settings: Settings, s3=None, packaged: Catalogue | None = None):
        self.settings = settings
        self._s3 = s3
        self._packaged = packaged
        self._parsed: dict[tuple[str, str], tuple[tuple, ServiceSpec | None, str | None]] = {}

    @property
    def s3(self):
        """The S3 client (created on first use)."""
        if self._s3 is None:
            from shared.aws import client
            self._s3 = client("s3", self.settings)
        return self._s3

    def read(self, catalogue: Catalogue, service: str | None = None) -> dict[str, dict[str, VersionEntry]]:
        """{service: {version: VersionEntry}} for the catalogue's services (or one); S3 errors propagate."""
        names = [service] if service else catalogue.names()
        out = self.packaged(catalogue, names)
        for (name, version), entry in self._s3_entries(names).items():
            if name in out:
                out[name][version] = entry  # an S3 version replaces a packaged one of the same name
        return out

    @staticmethod
    def packaged(catalogue: Catalogue, names: list[str]) -> dict[str, dict[str, VersionEntry]]:
        """v1 and the packaged versions of the named services (no S3 call); a live catalogue's from its packaged part."""
        versions = getattr(getattr(catalogue, "packaged", catalogue), "versions", {})
        out: dict[str, dict[str, VersionEntry]] = {}
        for name in names:
            if name not in catalogue or catalogue[name].derived_from:
                continue  # a derived service answers from its parent's model: its versions are its parent's
            out[name] = {BASE_VERSION: VersionEntry(name, BASE_VERSION, catalogue[name], "catalogue")}
            for v, spec in versions.get(name, {}).items():
                out[name][v] = VersionEntry(name, v, spec, "packaged")
        return out

    def _s3_entries(self, names: list[str]) -> dict[tuple[str, str], VersionEntry]:
        bucket = self.settings.bucket_name
        folders: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for name in names:
            prefix = naming.model_key(name, VERSIONS_DIR + "/")
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    version, _, rest = obj["Key"][len(prefix):].partition("/")
                    if version and rest:
                        folders.setdefault((name, version), []).append(
                            (obj["Key"], str(obj.get("ETag", "")).strip('"')))
        out = {}
        for (name, version), objects in sorted(folders.items()):
            key = version_prefix(name, version) + naming.MODEL_ENTRY
            if key not in dict(objects):
                continue  # files uploaded before their entry: not a version yet
            fingerprint = tuple(sorted(objects))
            cached = self._parsed.get((name, version))
            if cached is None or cached[0] != fingerprint:
                cached = (fingerprint, *self._parse(name, version, key))
                self._parsed[(name, version)] = cached
            _, spec, error = cached
            refused = self._refused(name)
            if refused:
                spec, error = None, refused
            out[(name, version)] = VersionEntry(name, version, spec, "s3", fingerprint, error)
        return out

    def _refused(self, service: str) -> str | None:
        """Why S3 may not add versions to this service (a packaged one that has its model), else None."""
        if self.settings.catalogue_s3_replaces_packaged:
            return None
        if self._packaged is None:
            self._packaged = catalogue_for(self.settings)
        own = self._packaged.services.get(service)
        if own is None or not (own.weights or own.artefact):
            return None
        log.error("service %s: S3 versions refused: it is a packaged service", service)
        return (f"names the packaged service {service!r}; S3 versions of packaged services need the "
                "operator setting catalogue_s3_replaces_packaged")

    def _parse(self, service: str, version: str, key: str) -> tuple[ServiceSpec | None, str | None]:
        bucket = self.settings.bucket_name
        try:
            check_version(version)
            if version == BASE_VERSION:
                raise CatalogueError(f"{BASE_VERSION} is the service's own entry; publish it as models/{service}/")
            obj = self.s3.get_object(Bucket=bucket, Key=key)
            if int(obj.get("ContentLength") or 0) > MAX_ENTRY_BYTES:
                raise CatalogueError(f"s3://{bucket}/{key} is larger than {MAX_ENTRY_BYTES} bytes")
            return parse_version_entry(service, version, obj["Body"].read(MAX_ENTRY_BYTES + 1), bucket), None
        except (CatalogueError, VersionError) as exc:
            log.error("service %s version %s: S3 entry refused: %s", service, version, exc)
            return None, str(exc)
        except Exception as exc:  # unreadable: reported, the other versions go on
            log.error("service %s version %s: s3://%s/%s unreadable: %s", service, version, bucket, key, exc)
            return None, f"unreadable: {type(exc).__name__}: {exc}"
