"""Encoders and the projection head: a small CNN sized for small images such as 8×8 digits
(``arch="small"``), and a ResNet-18 with the 3×3 CIFAR stem (``arch="resnet18"``: torchvision's
network when it is installed, else the same network written here).

``norm`` chooses the encoders' normalization: ``"batch"`` (BatchNorm, the default: a row's output
depends on the other rows of its forward call, so under ``--micro-batch`` the statistics are the
chunk's), or the batch-independent ``"group"`` (GroupNorm, 8 groups or fewer) and ``"layer"``
(GroupNorm with one group: LayerNorm over channels and pixels), with which a chunked forward is the
full-batch function."""
from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("batch", "group", "layer")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalization of ``channels`` feature maps: BatchNorm2d, GroupNorm(gcd(8, C)) or GroupNorm(1)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class Encoder(nn.Module):
    """``[N, C, H, W] -> [N, feature_dim]``: three conv blocks and global average pooling."""

    def __init__(self, in_channels: int, width: int = 32, feature_dim: int = 128, norm: str = "batch"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm_layer(norm, width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm_layer(norm, 2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, feature_dim, 3, padding=1, stride=2), norm_layer(norm, feature_dim), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """``[N, C, H, W] -> [N, 512]``: ResNet-18 with the CIFAR stem (one 3×3 stride-1 convolution, no
    max-pool), as the seed paper's CIFAR experiments use; torchvision's layers when it is installed."""

    feature_dim = 512

    def __init__(self, in_channels: int = 3, norm: str = "batch"):
        super().__init__()
        try:
            from torchvision.models import resnet18
        except ImportError:
            resnet18 = None
        if resnet18 is not None:
            net = resnet18(num_classes=1, norm_layer=None if norm == "batch" else lambda c: norm_layer(norm, c))
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
            net.fc = nn.Identity()
            self.net = net
            return
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.net = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), norm_layer(norm, 64), nn.ReLU(),
                                 *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHS = ("small", "resnet18")


class ContrastiveModel(nn.Module):
    """Encoder plus a two-layer projection head (``feature → feature → embed_dim``); the loss sees the
    head's output. ``arch="resnet18"`` has 512 features whatever ``feature_dim`` says; ``norm`` is the
    encoder's normalization (:data:`NORMS`)."""

    def __init__(self, in_channels: int, width: int = 32, feature_dim: int = 128, embed_dim: int = 64,
                 arch: str = "small", norm: str = "batch"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.encoder = (Encoder(in_channels, width, feature_dim, norm) if arch == "small"
                        else ResNet18(in_channels, norm))
        feature_dim = self.encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
