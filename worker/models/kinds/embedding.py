"""The embedding kind: find faces (dlib HOG), embed them (dlib ResNet, 128-D), enrol or search a gallery."""
from __future__ import annotations

import hashlib
import logging
import threading
from typing import Sequence

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from shared.catalogue import ServiceSpec
from shared.config import Settings
from shared.naming import DEFAULT_TENANT
from worker.models.gallery import GalleryFull, GalleryStore, check_gallery, check_name, check_tenant
from worker.models.handler import Handler, ItemError
from worker.models.loader import WeightsError, fetch_to_local, sha256_of

log = logging.getLogger(__name__)

MATCH_DISTANCE = 0.6   # dlib's threshold: same person below it (99.38% on LFW at this value)


class FaceSearch(Handler):
    """load() once; preprocess to RGB pixels; infer detects and embeds faces; postprocess enrols or searches.

    options: shape_predictor (source of the 5-point model), upsample (HOG pyramid up-steps, default 1),
    match_distance (default 0.6), max_side (larger images are scaled down first, default 1600)."""

    kind = "embedding"
    accepts_tensor = False

    def __init__(self, spec: ServiceSpec, settings: Settings, device=None):
        self.spec = spec
        self.settings = settings
        self.device = device
        self.labels: list[str] = []
        self.version = ""
        self.store: GalleryStore | None = None
        self.upsample = int(spec.options.get("upsample", 1))
        self.match_distance = float(spec.options.get("match_distance", MATCH_DISTANCE))
        self.max_side = int(spec.options.get("max_side", 1600))
        self._lock = threading.Lock()  # dlib's detector and networks are not documented thread-safe
        self._detector = self._shapes = self._encoder = None

    def load(self) -> "FaceSearch":
        """The detector, the shape predictor and the encoder; the gallery store on this stack's bucket."""
        try:
            import dlib
        except ImportError:
            raise WeightsError(f"service {self.spec.name!r} needs the dlib package (dlib-bin)") from None
        if not self.spec.weights or not self.spec.options.get("shape_predictor"):
            raise WeightsError(f"service {self.spec.name!r}: weights (encoder) and options.shape_predictor needed")
        encoder = fetch_to_local(self.spec.weights, self.settings)
        shapes = fetch_to_local(self.spec.options["shape_predictor"], self.settings)
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._shapes = dlib.shape_predictor(shapes)
            self._encoder = dlib.face_recognition_model_v1(encoder)
        except RuntimeError as exc:
            raise WeightsError(f"service {self.spec.name!r}: cannot load dlib models: {exc}") from None
        self.version = sha256_of(encoder)[:12]
        if self.store is None:
            from shared.aws import client
            self.store = GalleryStore(client("s3", self.settings), self.settings.bucket_name,
                                      max_entries=self.settings.gallery_max_entries)
        log.info("loaded service %s (dlib %s: HOG detector, 5-point shapes, ResNet encoder)",
                 self.spec.name, dlib.__version__)
        return self

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """RGB uint8 pixels (scaled down to max_side) and the factor back to the original's coordinates."""
        img = image.convert("RGB")
        scale = 1.0
        if max(img.size) > self.max_side:
            scale = max(img.size) / self.max_side
            img = img.resize((round(img.width / scale), round(img.height / scale)), Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)), scale

    def faces(self, pixels: np.ndarray, scale: float) -> list[dict]:
        """Every face: {"box": [left, top, right, bottom] in the original, "score", "embedding"}."""
        import dlib
        with self._lock:
            rects, scores, _ = self._detector.run(pixels, self.upsample, 0.0)
            if not rects:
                return []
            shapes = dlib.full_object_detections([self._shapes(pixels, r) for r in rects])
            embeddings = self._encoder.compute_face_descriptor(pixels, shapes)
        out = []
        for r, s, e in zip(rects, scores, embeddings):
            box = [round(v * scale) for v in (r.left(), r.top(), r.right(), r.bottom())]
            out.append({"box": box, "score": float(s), "embedding": np.asarray(e, dtype=np.float32)})
        return out

    def infer(self, batch: Sequence[tuple[np.ndarray, float]]) -> list[list[dict]]:
        """Every face of each image, detected and embedded (see faces)."""
        return [self.faces(pixels, scale) for pixels, scale in batch]

    def postprocess(self, output: list[list[dict]], top_ks: Sequence[int],
                    params: Sequence[dict | None]) -> list:
        """Per image its answer to its request's params (search by default: every face against the gallery;
        enroll: the most confident face), or the ItemError that fails it."""
        galleries: dict[tuple[str, str], list] = {}   # (tenant, gallery) -> entries, read once per batch
        out: list = []
        for faces, k, p in zip(output, top_ks, params):
            try:
                out.append(self._one(faces, k or self.spec.top_k, p or {}, galleries))
            except ItemError as exc:
                out.append(exc)
        return out

    def _one(self, faces: list[dict], top_k: int, p: dict, galleries: dict) -> list[dict]:
        op = p.get("op", "search")
        try:
            tenant = check_tenant(p.get("tenant", DEFAULT_TENANT))
            gallery = check_gallery(p.get("gallery"))
            name = check_name(p.get("name")) if op == "enroll" else None
        except ValueError as exc:
            raise ItemError("invalid_params", f"{self.spec.name}: {exc}") from None
        if op not in ("search", "enroll"):
            raise ItemError("invalid_params", f"{self.spec.name}: op must be search or enroll, not {op!r}")
        if op == "enroll" and not faces:
            raise ItemError("no_face", "no face found in the image; nothing enrolled")
        try:
            if op == "enroll":
                face = max(faces, key=lambda f: f["score"])
                entry = hashlib.sha256(name.encode() + face["embedding"].tobytes()).hexdigest()[:32]
                key = self.store.add(tenant, gallery, name, face["embedding"], entry, face["box"])
                return [{"label": name, "gallery": gallery, "box": face["box"], "faces": len(faces), "key": key}]
            if (tenant, gallery) not in galleries:
                galleries[(tenant, gallery)] = self.store.entries(tenant, gallery)
        except GalleryFull as exc:
            raise ItemError("gallery_full", str(exc)) from None
        except (BotoCoreError, ClientError, ValueError, KeyError) as exc:  # S3 down, or a corrupt entry
            log.error("gallery %s: %s: %s", gallery, type(exc).__name__, exc)
            raise ItemError("gallery_unavailable", f"gallery {gallery!r} cannot be read or written: "
                                                   f"{type(exc).__name__}") from None
        return [self._match(i, f, galleries[(tenant, gallery)], top_k) for i, f in enumerate(faces)]

    def _match(self, i: int, face: dict, entries: list, top_k: int) -> dict:
        best: dict[str, float] = {}
        if entries:
            names = [n for n, _ in entries]
            dist = np.linalg.norm(np.stack([e for _, e in entries]) - face["embedding"], axis=1)
            for n, d in zip(names, dist.tolist()):
                best[n] = min(d, best.get(n, float("inf")))  # an identity's distance: its nearest enrolled face
        ranked = sorted(best.items(), key=lambda kv: kv[1])
        matches = [{"name": n, "distance": round(d, 4)} for n, d in ranked if d < self.match_distance][:top_k]
        return {"face": i, "box": face["box"], "label": matches[0]["name"] if matches else "Unknown",
                "distance": round(ranked[0][1], 4) if ranked else None, "matches": matches}

    def close(self) -> None:
        """Drop the dlib models."""
        self._detector = self._shapes = self._encoder = None


HANDLER = FaceSearch  # the kinds table's entry (worker/models/kinds/__init__.py)
