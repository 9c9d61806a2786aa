"""Architecture builders by name: torchvision models and EfficientNet-Lite."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "efficientnet_lite0": _efficientnet_lite0,
}


def build(architecture: str, num_classes: int) -> nn.Module:
    """An untrained model of the named architecture (weights are loaded separately)."""
    if architecture.startswith("torchvision:"):
        import torchvision.models as tvm
        fn_name = architecture.split(":", 1)[1]
        fn = getattr(tvm, fn_name, None)
        if fn is None or not callable(fn):
            raise ValueError(f"unknown torchvision architecture {fn_name!r}")
        return fn(weights=None, num_classes=num_classes)
    if architecture not in BUILDERS:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(BUILDERS)} or torchvision:<fn>")
    return BUILDERS[architecture](num_classes)


def num_parameters(model: nn.Module) -> int:
    """Parameter count (for logs)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["build", "BUILDERS", "num_parameters", "torch"]
