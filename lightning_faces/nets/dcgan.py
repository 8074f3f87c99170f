"""DCGAN generator and discriminator (Radford et al., 2016).

Strided (transposed) convolutions only, no pooling and no hidden dense layers; batch norm (or
virtual batch norm) in the hidden layers, ReLU + tanh in G, LeakyReLU(0.2) in D, weights drawn
from N(0, 0.02) and batch-norm scales from N(1, 0.02), as the paper prescribes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.nets.conditioning import AttributeHead, ConditionalInput, Conditioning
from lightning_faces.nets.contract import Scores, check_image_size
from lightning_faces.nets.virtual_batch_norm import ReferenceBatchMixin, VirtualBatchNorm2d, uses_virtual_batch_norm

Norm = Literal["batch", "virtual", "none"]


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "virtual":
        return VirtualBatchNorm2d(channels)
    return nn.Identity()


def _channels(width: int, image_size: int, resolution: int) -> int:
    # DCGAN doubles the channels each time the resolution halves: 64x64 runs
    # 4x4:8w -> 8x8:4w -> 16x16:2w -> 32x32:w.
    return width * image_size // (2 * resolution)


class DCGANGenerator(ReferenceBatchMixin, nn.Module):
    """Maps latents (B, latent_dim) to images (B, channels, image_size, image_size) in [-1, 1].

    Args:
        latent_dim: size of z.
        width: channels of the last hidden layer; earlier ones double it.
        image_size: side of the images, a power of two >= 16 (linked from the data).
        channels: image channels.
        norm: ``batch``, ``virtual`` (Salimans et al.) or ``none``.
        attributes: attribute names G is conditioned on (linked from ``data.attributes``;
            empty: unconditional); they are concatenated with z as +-1.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        norm: Norm = "batch",
        attributes: list[str] | None = None,
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size, "the DCGAN networks")
        self.latent_dim, self.image_size = latent_dim, image_size
        self.attributes = list(attributes or [])
        if self.attributes and norm == "virtual":
            raise FacesError("virtual batch norm in G has no conditional form: use norm batch with attributes")
        self.input = ConditionalInput(self.attributes)
        first = _channels(width, image_size, 4)
        layers: list[nn.Module] = [
            # (B, latent_dim + A, 1, 1) -> (B, first, 4, 4): the "project and reshape" step as a conv
            nn.ConvTranspose2d(latent_dim + len(self.attributes), first, 4, 1, 0, bias=False),
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

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.stem(z, labels))

    def stem(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The first block's activations (B, C, 4, 4): project and reshape, norm, ReLU."""
        if uses_virtual_batch_norm(self):
            self._collect_reference_statistics()  # every layer's statistics, for this call
        z = self.input(z, labels)
        return self.net[:3](z.view(z.shape[0], -1, 1, 1))

    def synthesize(self, features: torch.Tensor) -> torch.Tensor:
        """``stem``'s activations -> images."""
        return self.net[3:](features)


class DCGANDiscriminator(ReferenceBatchMixin, nn.Module):
    """Maps images (B, channels, S, S) to real/fake logits (B,) and intermediate features.

    ``forward`` returns ``Scores(logits, features, attribute_logits)``: features are the
    activations of the block ``feature_layer`` (index into the hidden blocks, -1 the last), used
    by feature matching.

    Args:
        width: channels of the first block; later ones double it.
        image_size: side of the images, a power of two >= 16 (linked from the data).
        channels: image channels.
        norm: ``batch``, ``virtual`` (Salimans et al.) or ``none``.
        feature_layer: the block whose activations ``features`` are.
        attributes: attribute names D is conditioned on (linked from ``data.attributes``).
        conditioning: how D uses them: ``projection`` or ``auxiliary`` (a classifier head);
            both read the last block, as the real/fake head does (see ``nets.conditioning``).
    """

    def __init__(
        self,
        width: int = 64,
        image_size: int = 64,
        channels: int = 3,
        norm: Norm = "batch",
        feature_layer: int = -1,
        attributes: list[str] | None = None,
        conditioning: Conditioning = "projection",
    ) -> None:
        super().__init__()
        depth = check_image_size(image_size, "the DCGAN networks")
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
        self.image_size = image_size
        self.attributes = list(attributes or [])
        self.attribute_head = AttributeHead(self.attributes, _channels(width, image_size, 4) * 16, conditioning)
        self.register_buffer("reference", None)
        init_dcgan_weights(self)

    def _body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(last block's output (B, 8w, 4, 4), the features, the real/fake logits (B,))."""
        features = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.feature_layer:
                features = x
        return x, features, self.head(x).flatten()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        if uses_virtual_batch_norm(self):
            self._collect_reference_statistics()
        last, features, logits = self._body(x)
        projection, attribute_logits = self.attribute_head(last, labels)
        return Scores(logits if projection is None else logits + projection, features, attribute_logits)


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
