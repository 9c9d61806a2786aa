"""A black-hole worker for bench/chaos.py: `python -m worker` whose imagenet model fails every forward pass.

The model is loaded for real and then broken the way tests/test_worker_selfcheck.py breaks one (the first
convolution's weights lose their shape, as a bad weights file would leave them). The worker keeps taking
work and answering `inference_failed` until its self-check (worker/selfcheck.py) sends it away with exit 4.
"""
from __future__ import annotations

import sys

import torch

from worker.__main__ import main
from worker.models.registry import ModelRegistry

_load = ModelRegistry.load


def _broken_load(self):
    """Load as usual, then break imagenet's first convolution."""
    _load(self)
    handler = self.handlers.get("imagenet")
    net = getattr(handler, "model", None)
    if isinstance(net, torch.nn.Module):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.weight = torch.nn.Parameter(torch.zeros(1, 1, 1, 1))
    return self


if __name__ == "__main__":
    ModelRegistry.load = _broken_load
    sys.exit(main())
