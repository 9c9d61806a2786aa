"""The score kind's contract: one [{label, index, score, verdict, threshold}] per image (regression: no verdict)."""
from __future__ import annotations

from shared.kinds.classifier import Classifier


class Score(Classifier):
    """XCloud's classifier shape plus {verdict, threshold}; a regression answers [{name, score}]."""

    name = "score"
    result_schema = {**Classifier.result_schema,
                     "description": "score: one result with its verdict (a regression: label, index, score only)",
                     "properties": {**Classifier.result_schema["properties"], "verdict": {"type": "string"},
                                    "threshold": {"type": "number"}}}

    def describe(self, spec) -> dict:
        """Its verdict's threshold."""
        return {"threshold": spec.threshold}

    def xcloud(self, results: list[dict]) -> list[dict]:
        """The classifier's shape with the verdict, or [{name, score}] for a regression."""
        if results and "verdict" not in results[0]:
            return [{"name": r.get("label"), "score": round(float(r.get("score", 0.0)), 4)} for r in results]
        return [{**x, "verdict": r.get("verdict"), "threshold": r.get("threshold")}
                for x, r in zip(super().xcloud(results), results)]

    def summary(self, results: list[dict]) -> str:
        """'<label> <score> (<verdict>)'."""
        top = results[0]
        return super().summary(results) + (f" ({top['verdict']})" if "verdict" in top else "")


KIND = Score()
