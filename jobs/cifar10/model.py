"""The model of the cifar10 jobs: ModerateCNN, a VGG-like network for 32x32 colour images.

Six 3x3 convolutions in three blocks, each block ending in a 2x2 max-pool, then
three linear layers with dropout: 3,491,530 parameters, no batch norm (so FedAvg
averages every tensor of the state dict and there are no running statistics).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_mid: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_mid, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
    ]


class ModerateCNN(nn.Module):
    """conv 3-32-64, pool, conv 64-128-128, pool, conv 128-256-256, pool, linear 4096-512-512-10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, 32, 64),
            *_block(64, 128, 128),
            nn.Dropout2d(p=0.05),
            *_block(128, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(p=0.1),
            nn.Linear(256 * 4 * 4, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(p=0.1),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of shape (N, 3, 32, 32) to class logits of shape (N, 10)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out
