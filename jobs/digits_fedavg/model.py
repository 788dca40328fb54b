"""The model of the digits_fedavg job: a small CNN for 8x8 grey-scale digits."""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool, two linear layers: about 38k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of shape (N, 1, 8, 8) to class logits of shape (N, 10)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out
