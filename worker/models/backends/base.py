"""What every inference backend shares: the Backend interface, BackendBase, BackendUnavailable, softmax_probs."""
from __future__ import annotations

from typing import Protocol

import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.loader import WeightsError


class BackendUnavailable(WeightsError):
    """The backend's runtime (package or device) is not present on this machine."""


class Backend(Protocol):
    """A loaded model that maps a normalised float batch [N,3,H,W] to class probabilities [N,C]."""

    name: str
    device: torch.device
    version: str

    def load(self) -> "Backend": ...

    def forward(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


class BackendBase:
    """What every backend holds: its service's catalogue entry, the settings and its device."""

    name = ""

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device):
        self.spec = spec
        self.settings = settings
        self.device = device
        self.version = ""       # the loaded artefact's identity (a digest), set by load()


def softmax_probs(logits: torch.Tensor, num_classes: int, where: str, outputs: str = "logits") -> torch.Tensor:
    """Float32 CPU probabilities (softmax of logits; probabilities/regression outputs as they are).

    Raises WeightsError when the model's output width is not num_classes."""
    if logits.ndim != 2 or logits.shape[-1] != num_classes:
        raise WeightsError(f"{where}: model outputs shape {tuple(logits.shape)}, expected [N, {num_classes}]")
    if outputs != "logits":  # the graph ends in its own softmax, or the output is a regression value
        return logits.float().cpu()
    return logits.float().softmax(dim=-1).cpu()
