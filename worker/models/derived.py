"""Derived services: a label subset of another classifier's model, answered from the parent's forward pass."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.handler import Handler


class DerivedHandler(Handler):
    """Wraps its parent's loaded handler and answers `spec.classes` of it: probabilities renormalised over
    the subset.

    No weights of its own: preprocessing, collating and the forward pass are the parent's, so the engine
    may run a batch mixing the parent and its derived services as one pass (the parent's run_batch with
    each item's answerer); only postprocess is this service's own.
    """

    kind = "classifier"

    def __init__(self, spec: ServiceSpec, settings: Settings, base: Handler):
        if spec.derived_from != base.spec.name:
            raise ValueError(f"service {spec.name!r} derives from {spec.derived_from!r}, not {base.spec.name!r}")
        self.spec = spec
        self.settings = settings
        self.base = base                       # the parent's handler (owned by whoever loaded it)
        self.device = getattr(base, "device", None)
        self.accepts_tensor = base.accepts_tensor
        self.index = torch.tensor(spec.classes, dtype=torch.long)
        self.labels = [base.labels[i] for i in spec.classes]

    @property
    def forward_owner(self) -> Handler:
        """The parent: its forward pass answers this service."""
        return self.base.forward_owner

    @property
    def version(self) -> str:
        """The parent model's version."""
        return self.base.version

    @property
    def loaded(self) -> bool:
        """Whether the parent is loaded (nothing of its own to load)."""
        return self.base.loaded

    def load(self) -> "DerivedHandler":
        """Nothing to load: the parent holds the model."""
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The parent's preprocessing (PIL path)."""
        return self.base.preprocess(image)

    def preprocess_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """The parent's preprocessing (torchvision.io path)."""
        return self.base.preprocess_tensor(image)

    def run_batch(self, items, top_ks, params, answerers=None) -> list:
        """The parent's forward pass (its collate and infer, its metadata too), answered by this service."""
        return self.base.run_batch(items, top_ks, params, answerers or [self] * len(items))

    def postprocess(self, probs: torch.Tensor, top_ks: Sequence[int],
                    params: Sequence[dict | None]) -> list[list[dict]]:
        """From the parent's probabilities: top-k over the subset, or Unknown when its share is low."""
        sub = probs.index_select(-1, self.index)
        share = sub.sum(dim=-1)
        renorm = sub / share.clamp_min(1e-12).unsqueeze(-1)
        k = max(1, min(max(top_ks, default=1), renorm.shape[-1]))
        scores, picks = renorm.topk(k, dim=-1)
        out = []
        for row_share, s_row, i_row, want in zip(share.tolist(), scores.tolist(), picks.tolist(), top_ks):
            if row_share < self.spec.min_share or s_row[0] < self.spec.unknown_threshold:
                # the score of an Unknown is how much of the probability the subset held
                out.append([{"label": "Unknown", "index": -1, "score": round(row_share, 6)}])
                continue
            out.append([{"label": self.labels[j], "index": self.spec.classes[j], "score": round(s, 6)}
                        for s, j in zip(s_row[: max(1, want)], i_row)])
        return out

    @property
    def model_info(self) -> dict:
        """{"name", "version"} for replies: the parent's model, and the subset it answers."""
        return {"name": f"{self.spec.name}/{self.base.spec.architecture}",
                "version": self.version, "derived_from": self.base.spec.name}


DerivedClassifier = DerivedHandler   # the name it had before any kind could be wrapped
