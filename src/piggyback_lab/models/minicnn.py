"""The mini benchmark's base: a small VGG-style CNN, pretrained here on Fashion-MNIST."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.models.registry import register_backbone

# The pretraining data's normalisation (src/piggyback_lab/data/mini.py normalises Fashion-MNIST so).
MINI_MEAN, MINI_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@register_backbone("minicnn", classifier="classifier", mean=MINI_MEAN, std=MINI_STD)
class MiniCNN(nn.Module):
    """A small VGG-style CNN with BatchNorm for the embedded mini benchmark (32x32 inputs)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU())
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))
