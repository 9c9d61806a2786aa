"""The derived kind: a label subset of another classifier's model, answered from the parent's forward pass."""
from __future__ import annotations

import torch
from PIL import Image

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.kinds.classifier import ImageClassifier


class DerivedClassifier:
    """Answers `spec.classes` of its parent's model: probabilities renormalised over the subset.

    No weights of its own: it holds the parent's loaded handler, so its images are preprocessed,
    batched and run exactly as the parent's, and the engine may run both in one forward pass.
    """

    kind = "classifier"
    accepts_tensor = True

    def __init__(self, spec: ServiceSpec, settings: Settings, base):
        if spec.derived_from != base.spec.name:
            raise ValueError(f"service {spec.name!r} derives from {spec.derived_from!r}, not {base.spec.name!r}")
        self.spec = spec
        self.settings = settings
        self.base = base                       # the parent's handler (owned by whoever loaded it)
        self.device = base.device
        self.index = torch.tensor(spec.classes, dtype=torch.long)
        self.labels = [base.labels[i] for i in spec.classes]

    @property
    def forward_owner(self):
        """The handler whose forward pass this service's answers come from."""
        return self.base

    @property
    def version(self) -> str:
        """The parent model's version."""
        return self.base.version

    def load(self) -> "DerivedClassifier":
        """Nothing to load: the parent holds the model."""
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The parent's preprocessing (PIL path)."""
        return self.base.preprocess(image)

    def preprocess_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """The parent's preprocessing (torchvision.io path)."""
        return self.base.preprocess_tensor(image)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """The parent's class probabilities [N, parent classes]."""
        return self.base.infer(batch)

    def postprocess(self, probs: torch.Tensor, top_k: int | None = None) -> list[list[dict]]:
        """From the parent's probabilities: top-k over the subset, or Unknown when its share is low."""
        sub = probs.index_select(-1, self.index)
        share = sub.sum(dim=-1)
        renorm = sub / share.clamp_min(1e-12).unsqueeze(-1)
        k = max(1, min(top_k or self.spec.top_k, renorm.shape[-1]))
        scores, picks = renorm.topk(k, dim=-1)
        out = []
        for row_share, s_row, i_row in zip(share.tolist(), scores.tolist(), picks.tolist()):
            if row_share < self.spec.min_share or s_row[0] < self.spec.unknown_threshold:
                # the score of an Unknown is how much of the probability the subset held
                out.append([{"label": "Unknown", "index": -1, "score": round(row_share, 6)}])
                continue
            out.append([{"label": self.labels[j], "index": self.spec.classes[j], "score": round(s, 6)}
                        for s, j in zip(s_row, i_row)])
        return out

    # one forward pass (the parent's) for preprocessed items, then this service's postprocess: the same steps
    run_batch = ImageClassifier.run_batch

    def close(self) -> None:
        """Nothing of its own to release (the parent's owner closes the model)."""

    @property
    def model_info(self) -> dict:
        """{"name", "version"} for replies: the parent's model, and the subset it answers."""
        return {"name": f"{self.spec.name}/{self.base.spec.architecture}",
                "version": self.version, "derived_from": self.base.spec.name}
