"""Architecture builders by name: torchvision models and EfficientNet-Lite."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _efficientnet_lite2(num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite2", num_classes=num_classes)


class PlantDiseaseCNN(nn.Module):
    """The pdr CNN of abdullahselek/plant-disease-classification-pytorch (network.py): 128x128 in.

    Same parameter names and shapes as its state_dict (conv1, conv2, fc1, fc2), so it loads strictly;
    its dropouts are inactive at inference and hold no parameters."""

    def __init__(self, num_classes: int = 38):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=3)
        self.fc1 = nn.Linear(20 * 30 * 30, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2(x), 2))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "efficientnet_lite2": _efficientnet_lite2,   # imagenet v2 (input 260)
    "pdr_cnn": PlantDiseaseCNN,
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
