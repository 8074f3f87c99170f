"""SNGAN's ResNet generator and discriminator (Miyato et al., 2018), for 32 px and up.

G: a linear layer to 4x4, one up-sampling residual block per doubling, then batch norm, ReLU, a
3x3 convolution and tanh. D: residual blocks that halve the resolution down to 4x4 (the first one
"optimized": no ReLU before its first convolution), one more block at 4x4, ReLU, a sum over
positions and a linear layer; every D layer has spectral norm, so D is 1-Lipschitz per layer and
needs neither batch norm nor a gradient penalty. Channels double as the resolution halves (as in
DCGAN), capped at 16x ``width``: at 64 px and width 64, G's blocks run 1024 -> 512 -> 256 -> 128
-> 64, Mimicry's SNGAN-64 layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from lightning_faces.nets.conditioning import AttributeHead, ConditionalInput, Conditioning
from lightning_faces.nets.contract import Scores, check_image_size

MAX_WIDTH_MULTIPLE = 16


def _channels(width: int, scale: int) -> int:
    """Channels of a layer whose resolution is ``image_size / scale``."""
    return width * min(scale, MAX_WIDTH_MULTIPLE)


def _init(layer: nn.Module, gain: float) -> nn.Module:
    # Xavier-uniform: sqrt(2) inside the residual branches (ReLU before them), 1 elsewhere
    nn.init.xavier_uniform_(layer.weight, gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class UpBlock(nn.Module):
    """BN, ReLU, 2x nearest up-sampling, conv3x3, BN, ReLU, conv3x3; shortcut: up-sample, conv1x1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm2d(in_channels), nn.BatchNorm2d(out_channels)
        self.conv1 = _init(nn.Conv2d(in_channels, out_channels, 3, 1, 1), math.sqrt(2))
        self.conv2 = _init(nn.Conv2d(out_channels, out_channels, 3, 1, 1), math.sqrt(2))
        self.shortcut = _init(nn.Conv2d(in_channels, out_channels, 1, 1, 0), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest")  # (B, C_in, 2H, 2W)
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownBlock(nn.Module):
    """[ReLU], conv3x3, ReLU, conv3x3, [2x2 average pool]; shortcut: conv1x1, [pool].

    ``first`` is the optimized block that reads the image: no ReLU before its first convolution
    and the shortcut pools before its 1x1 convolution (cheaper, as in the paper's code).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = spectral_norm(_init(nn.Conv2d(in_channels, out_channels, 3, 1, 1), math.sqrt(2)))
        self.conv2 = spectral_norm(_init(nn.Conv2d(out_channels, out_channels, 3, 1, 1), math.sqrt(2)))
        self.shortcut = spectral_norm(_init(nn.Conv2d(in_channels, out_channels, 1, 1, 0), 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.relu(x))
        h = self.conv2(F.relu(h))
        if self.downsample:
            h = F.avg_pool2d(h, 2)  # (B, C_out, H/2, W/2)
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        skip = self.shortcut(x)
        return h + (F.avg_pool2d(skip, 2) if self.downsample else skip)


class ResNetGenerator(nn.Module):
    """SNGAN's ResNet G: latents (B, latent_dim) to images (B, 3, S, S) in [-1, 1].

    Args:
        latent_dim: size of z (SNGAN: 128).
        width: channels of the last block (at S/2 -> S); earlier blocks double it, up to 16x.
        image_size: side of the images, a power of two >= 16 (linked from the data).
        channels: image channels.
        attributes: attribute names G is conditioned on (linked from ``data.attributes``;
            empty: unconditional); they are concatenated with z as +-1.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        attributes: list[str] | None = None,
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size, "the ResNet networks")
        self.latent_dim, self.image_size = latent_dim, image_size
        self.attributes = list(attributes or [])
        self.input = ConditionalInput(self.attributes)
        self.first_channels = _channels(width, image_size // 4)
        # (z, attributes) -> (B, C, 4, 4)
        self.project = _init(nn.Linear(latent_dim + len(self.attributes), 16 * self.first_channels), 1.0)
        scales = [image_size // 2**k for k in range(2, depth)]  # 4x4 -> S/2: S/4, S/8, ..., 2
        self.blocks = nn.Sequential(*(UpBlock(_channels(width, s), _channels(width, s // 2)) for s in scales))
        self.norm = nn.BatchNorm2d(width)
        self.to_rgb = _init(nn.Conv2d(width, channels, 3, 1, 1), 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.stem(z, labels))

    def stem(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The first block's output (B, C, 8, 8): the projection to 4x4, then one residual block."""
        h = self.project(self.input(z, labels)).view(z.shape[0], self.first_channels, 4, 4)
        return self.blocks[0](h)

    def synthesize(self, features: torch.Tensor) -> torch.Tensor:
        """``stem``'s output -> images."""
        h = self.blocks[1:](features)  # (B, width, S, S)
        return torch.tanh(self.to_rgb(F.relu(self.norm(h))))


class ResNetDiscriminator(nn.Module):
    """SNGAN's ResNet D with spectral norm: images (B, 3, S, S) to logits (B,) and features.

    The features are the pooled activations (B, C) that the final linear layer reads.

    Args:
        width: channels of the first block (at S/2); later blocks double it, up to 16x.
        image_size: side of the images, a power of two >= 16 (linked from the data).
        channels: image channels.
        attributes: attribute names D is conditioned on (linked from ``data.attributes``).
        conditioning: how D uses them: ``projection`` (SNGAN's cGAN) or ``auxiliary`` (a
            classifier head); both read the pooled features, with spectral norm.
    """

    def __init__(
        self,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        attributes: list[str] | None = None,
        conditioning: Conditioning = "projection",
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size, "the ResNet networks")
        blocks = [DownBlock(channels, width, downsample=True, first=True)]  # S -> S/2
        for k in range(1, depth - 2):  # S/2 -> S/4 -> ... -> 4
            blocks.append(DownBlock(_channels(width, 2 ** (k - 1)), _channels(width, 2**k), downsample=True))
        last = _channels(width, 2 ** (depth - 3))
        blocks.append(DownBlock(last, last, downsample=False))  # one more block at 4x4
        self.blocks = nn.Sequential(*blocks)
        self.head = spectral_norm(_init(nn.Linear(last, 1), 1.0))
        self.image_size = image_size
        self.attributes = list(attributes or [])
        self.attribute_head = AttributeHead(
            self.attributes, last, conditioning, lambda layer: spectral_norm(_init(layer, 1.0))
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        features = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, C): global sum pooling
        logits = self.head(features).flatten()
        projection, attribute_logits = self.attribute_head(features, labels)
        return Scores(logits if projection is None else logits + projection, features, attribute_logits)
