"""The embedding kind's contract: a `gallery` to search; per face {face, box, label, distance, matches}."""
from __future__ import annotations

from shared.kinds import Kind, ParamError
from shared.naming import GALLERY_CHARS, GALLERY_RE


class Embedding(Kind):
    """Face search: a request names a gallery (POST /faces/<gallery> enrols into it); answers are per face."""

    name = "embedding"
    enrols_faces = True
    file_options = ("shape_predictor",)   # dlib's 5-point model, loaded beside the encoder
    request_params = {"gallery": {"schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                                  "description": "the gallery to search (required; POST /faces/{gallery} enrols)"}}
    _box = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
    result_schema = {"type": "object", "required": ["label", "box"],
                     "description": "embedding: per face found, its nearest enrolled names (enrolment: the face kept)",
                     "properties": {"face": {"type": "integer"}, "box": _box, "label": {"type": "string"},
                                    "distance": {"type": ["number", "null"]},
                                    "matches": {"type": "array", "items": {
                                        "type": "object", "required": ["name", "distance"],
                                        "properties": {"name": {"type": "string"}, "distance": {"type": "number"}}}},
                                    "gallery": {"type": "string"}, "faces": {"type": "integer"},
                                    "key": {"type": "string"}}}

    def params(self, field, spec, tenant: str) -> dict:
        """{op: search, gallery, tenant}: the gallery is the client's, the tenant the server's (its key)."""
        gallery = field("gallery")
        if gallery is None:
            raise ParamError("missing_gallery", f"service {spec.name!r} searches a gallery: give gallery=<name> "
                                                "(enrol faces with POST /faces/<gallery>)")
        if not isinstance(gallery, str) or not GALLERY_RE.match(gallery):
            raise ParamError("invalid_gallery", f"gallery must be {GALLERY_CHARS}")
        return {"op": "search", "gallery": gallery, "tenant": tenant}

    def xcloud(self, results: list[dict]) -> list[dict]:
        """Per face {name, distance, box, matches}."""
        return [{"name": r.get("label"), "distance": r.get("distance"), "box": r.get("box"),
                 "matches": r.get("matches", [])} for r in results]

    def summary(self, results: list[dict]) -> str:
        """'<n> face(s); nearest <name> at <distance>', or 'no face'."""
        if not results:
            return "no face"
        best = results[0]
        dist = "" if best.get("distance") is None else f" at {best['distance']:.3f}"
        return f"{len(results)} face(s); nearest {best['label']}{dist}"


KIND = Embedding()
