"""DCGAN generator and discriminator (Radford et al., 2016) as plain ``nn.Module``s.

Strided (transposed) convolutions only, no pooling and no hidden dense layers; batch norm (or
virtual batch norm) in the hidden layers, ReLU + tanh in G, LeakyReLU(0.2) in D, weights drawn
from N(0, 0.02) and batch-norm scales from N(1, 0.02), as the paper prescribes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from lightning_faces.errors import FacesError

Norm = Literal["batch", "virtual", "none"]


def check_image_size(image_size: int) -> int:
    """Returns log2(image_size); raises FacesError unless it is a power of two >= 16."""
    depth = int(round(math.log2(image_size))) if image_size > 0 else 0
    if image_size < 16 or 2**depth != image_size:
        raise FacesError(
            f"image_size {image_size} is not supported by the DCGAN networks: "
            "use a power of two from 16 up (32, 64, 128, ...)"
        )
    return depth


def _channels(width: int, image_size: int, resolution: int) -> int:
    # DCGAN doubles the channels each time the resolution halves: 64x64 runs
    # 4x4:8w -> 8x8:4w -> 16x16:2w -> 32x32:w.
    return width * image_size // (2 * resolution)


class VirtualBatchNorm2d(nn.Module):
    """Batch norm with statistics from a reference batch fixed at the start of training.

    Salimans et al. (2016), "Improved techniques for training GANs", section 3.4: each example is
    normalized with the statistics of the reference batch combined with itself (weight 1/(N+1)),
    so an example's output does not depend on the other examples in its batch.

    The owning network first runs its reference batch with ``collect=True`` (which stores the
    reference statistics, with gradients), then the real batch.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.collect = False  # set by the owning network while it runs the reference batch
        self.ref_size = 1
        self._ref_mean: torch.Tensor | None = None
        self._ref_meansq: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3)
        if self.collect:
            self._ref_mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
            self._ref_meansq = x.square().mean(dims, keepdim=True)
            mean, meansq = self._ref_mean, self._ref_meansq
        else:
            if self._ref_mean is None or self._ref_meansq is None:
                raise RuntimeError("VirtualBatchNorm2d has no reference statistics yet")
            n = 1.0 / (self.ref_size + 1)
            # per-example statistics mixed with the reference batch's: (B, C, 1, 1)
            mean = (1 - n) * self._ref_mean + n * x.mean((2, 3), keepdim=True)
            meansq = (1 - n) * self._ref_meansq + n * x.square().mean((2, 3), keepdim=True)
        var = (meansq - mean.square()).clamp_min(0)
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)
        return x_hat * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "virtual":
        return VirtualBatchNorm2d(channels)
    return nn.Identity()


class _ReferenceBatchMixin:
    """Shared by G and D: a fixed reference batch for virtual batch norm, kept as a buffer."""

    reference: torch.Tensor | None

    def _vbn_layers(self) -> list[VirtualBatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, VirtualBatchNorm2d)]  # type: ignore[attr-defined]

    @property
    def uses_virtual_batch_norm(self) -> bool:
        return bool(self._vbn_layers())

    def set_reference(self, batch: torch.Tensor) -> None:
        """Fixes the reference batch (latents for G, real images for D) for virtual batch norm."""
        self.reference = batch.detach().clone()
        for layer in self._vbn_layers():
            layer.ref_size = batch.shape[0]

    def _collect_reference_statistics(self) -> None:
        if self.reference is None:
            raise RuntimeError("virtual batch norm needs a reference batch: call set_reference() before forward")
        layers = self._vbn_layers()
        for layer in layers:
            layer.collect = True
            layer.ref_size = self.reference.shape[0]
        try:
            self._body(self.reference)  # type: ignore[attr-defined]
        finally:
            for layer in layers:
                layer.collect = False


class Generator(_ReferenceBatchMixin, nn.Module):
    """Maps latents (B, latent_dim) to images (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 100,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size)
        self.latent_dim = latent_dim
        first = _channels(width, image_size, 4)
        layers: list[nn.Module] = [
            # (B, latent_dim, 1, 1) -> (B, first, 4, 4): the "project and reshape" step as a conv
            nn.ConvTranspose2d(latent_dim, first, 4, 1, 0, bias=False),
            _norm_layer(norm, first),
            nn.ReLU(inplace=True),
        ]
        resolution = 4
        for _ in range(depth - 3):
            in_ch, out_ch = _channels(width, image_size, resolution), _channels(width, image_size, resolution * 2)
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False),
                _norm_layer(norm, out_ch),
                nn.ReLU(inplace=True),
            ]
            resolution *= 2
        layers += [
            nn.ConvTranspose2d(_channels(width, image_size, resolution), channels, 4, 2, 1, bias=False),
            nn.Tanh(),
        ]
        self.net = nn.Sequential(*layers)
        self.register_buffer("reference", None)
        init_dcgan_weights(self)

    def _body(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.uses_virtual_batch_norm:
            self._collect_reference_statistics()
        return self._body(z)


class Discriminator(_ReferenceBatchMixin, nn.Module):
    """Maps images (B, channels, S, S) to real/fake logits (B,) and intermediate features.

    ``forward`` returns ``(logits, features)``: features are the activations of the block
    ``feature_layer`` (index into the hidden blocks, -1 the last), used by feature matching.
    """

    def __init__(
        self,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        norm: Norm = "batch",
        feature_layer: int = -1,
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size)
        blocks: list[nn.Module] = [
            # no normalization on D's input layer (Radford et al.)
            nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True))
        ]
        resolution = image_size // 2
        for _ in range(depth - 3):
            in_ch, out_ch = _channels(width, image_size, resolution), _channels(width, image_size, resolution // 2)
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False),
                    _norm_layer(norm, out_ch),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            resolution //= 2
        self.blocks = nn.ModuleList(blocks)
        # (B, 8w, 4, 4) -> (B, 1, 1, 1)
        self.head = nn.Conv2d(_channels(width, image_size, 4), 1, 4, 1, 0, bias=False)
        if not -len(blocks) <= feature_layer < len(blocks):
            raise FacesError(
                f"feature_layer {feature_layer} is out of range: D has {len(blocks)} blocks at "
                f"image_size {image_size}, so use -{len(blocks)} .. {len(blocks) - 1}"
            )
        self.feature_layer = feature_layer % len(blocks)
        self.register_buffer("reference", None)
        init_dcgan_weights(self)

    def _body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.feature_layer:
                features = x
        return self.head(x).flatten(), features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_virtual_batch_norm:
            self._collect_reference_statistics()
        return self._body(x)


def init_dcgan_weights(module: nn.Module) -> None:
    """Draws conv weights from N(0, 0.02) and norm scales from N(1, 0.02), biases zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, VirtualBatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
