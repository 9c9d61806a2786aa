"""The classifier kind's contract: top-k [{label, index, score}], a single Unknown (index -1) below threshold."""
from __future__ import annotations

from shared.kinds import Kind


class Classifier(Kind):
    """No parameters of its own; XCloud's [{name, category_id, prob}] with 1-based ids (Unknown: -1)."""

    name = "classifier"
    result_schema = {"type": "object", "required": ["label", "index", "score"],
                     "description": "classifier: top-k; a single Unknown (index -1) below the threshold",
                     "properties": {"label": {"type": "string"}, "index": {"type": "integer", "minimum": -1},
                                    "score": {"type": "number"}}}

    def xcloud(self, results: list[dict]) -> list[dict]:
        """[{name, category_id, prob}] (XCloud numbers categories from 1)."""
        out = []
        for r in results:
            index = r.get("index", -1)
            out.append({"name": r.get("label"),
                        "category_id": index + 1 if isinstance(index, int) and index >= 0 else -1,
                        "prob": round(float(r.get("score", 0.0)), 4)})
        return out

    def summary(self, results: list[dict]) -> str:
        """'<top label> <score>'."""
        top = results[0]
        return f"{top['label']} {top['score']:.3f}"


KIND = Classifier()
