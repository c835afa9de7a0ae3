"""A small convolutional encoder and a projection head, sized for small images such as 8×8 digits."""
from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """``[N, C, H, W] -> [N, feature_dim]``: three conv blocks and global average pooling."""

    def __init__(self, in_channels: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, feature_dim, 3, padding=1, stride=2), nn.BatchNorm2d(feature_dim), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastiveModel(nn.Module):
    """Encoder plus a two-layer projection head; the loss sees the head's output."""

    def __init__(self, in_channels: int, width: int = 32, feature_dim: int = 128, embed_dim: int = 64):
        super().__init__()
        self.encoder = Encoder(in_channels, width, feature_dim)
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
