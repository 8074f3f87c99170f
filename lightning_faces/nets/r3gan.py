"""R3GAN's networks (Huang et al., "The GAN is dead; long live the GAN!", NeurIPS 2024).

A modern ConvNet with no normalization layer of any kind, which the paper shows is enough once
the loss is well behaved (``objectives.RelativisticPairing`` with ``regularizers.R1`` and ``R2``):

- **Residual blocks**: 1x1 conv (C -> expansion x C), leaky ReLU 0.2, grouped 3x3 conv (groups of
  ``group_size`` channels), leaky ReLU 0.2, 1x1 conv back to C, added to the stream. The stream
  itself stays linear: no activation after the sum, none between stages.
- **Fix-up initialisation**: each branch's last conv starts at zero, so every block starts as
  the identity; the branch's other convs are He-initialised for leaky ReLU and scaled by
  L^(-1/4), L the number of blocks in the network (1/(2m - 2) with m = 3 convs a branch), so the
  summed branches keep the stream's variance as the network gets deeper.
- **Resampling** through the [1, 3, 3, 1] low-pass filter (a [1, 2, 1] blur folded into the 2x
  step), depthwise; a 1x1 conv changes the width where stages differ (G: before up-sampling,
  D: after down-sampling).
- **G** starts from a learned 4x4 basis: a linear layer maps z (with the attributes' embedding)
  to one coefficient per channel of the basis (``stem="basis"``; or, ``stem="linear"``, to every
  channel and position of the 4x4 features, the basis added as their learned mean, as DCGAN's
  first layer maps z: in a narrow G the paper's stem gives z few numbers). Its last layer is
  a 1x1 conv to RGB, no tanh (images are clipped to [-1, 1] only when saved).
- **D** reads the image with a 1x1 conv, and ends at 4x4 in a depthwise 4x4 conv (one weight
  per channel and position, replacing global pooling) and a linear layer to the score.

Widths: ``width`` channels at every resolution up to 32 px, halved at each doubling above
(the paper's FFHQ-64: 768 up to 32 px, 384 at 64 px, two blocks per stage, 16 channels a group).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.nets.conditioning import AttributeHead, Conditioning, signed
from lightning_faces.nets.contract import Scores, check_image_size

SLOPE = 0.2  # leaky ReLU's negative slope
ACTIVATION_GAIN = math.sqrt(2 / (1 + SLOPE**2))  # He's gain for leaky ReLU 0.2
LOW_PASS = (1.0, 3.0, 3.0, 1.0)  # [1, 2, 1] * [1, 1]: the blur and the 2x step in one filter


def he_init(layer: nn.Module, gain: float) -> nn.Module:
    """Weights ~ N(0, gain^2 / fan_in) (fan_in: inputs of one output, per group), biases 0."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def stage_widths(width: int, image_size: int, widths: list[int] | None = None) -> dict[int, int]:
    """Channels at each resolution from 4 px to ``image_size``: ``widths`` in that order when
    given, else ``width`` up to 32 px, halved at each doubling above."""
    depth = check_image_size(image_size, "the R3GAN networks")
    resolutions = [2**k for k in range(2, depth + 1)]
    if widths is None:
        return {r: max(1, width // max(1, r // 32)) for r in resolutions}
    if len(widths) != len(resolutions):
        raise FacesError(
            f"widths needs one channel count per resolution from 4 to {image_size} px ({len(resolutions)}), "
            f"got {len(widths)}: {widths}"
        )
    return dict(zip(resolutions, widths, strict=True))


class Resample(nn.Module):
    """2x up- or down-sampling through the [1, 3, 3, 1] low-pass filter, channel by channel."""

    def __init__(self, channels: int, up: bool) -> None:
        super().__init__()
        taps = torch.tensor(LOW_PASS)
        kernel = torch.outer(taps, taps) / taps.sum() ** 2  # (4, 4), sums to 1
        self.up, self.channels = up, channels
        # up-sampling spreads each pixel over 4: the kernel sums to 4 so the mean is kept
        self.register_buffer("kernel", (kernel * (4 if up else 1)).expand(channels, 1, 4, 4).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        if self.up:  # (B, C, H, W) -> (B, C, 2H, 2W)
            return F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=self.channels)
        return F.conv2d(x, kernel, stride=2, padding=1, groups=self.channels)  # -> (B, C, H/2, W/2)


class Block(nn.Module):
    """x + conv1x1(lrelu(grouped conv3x3(lrelu(conv1x1(x))))), the last conv starting at zero."""

    def __init__(self, channels: int, expansion: int, group_size: int, blocks_in_network: int) -> None:
        super().__init__()
        inner = channels * expansion
        group_size = min(group_size, inner)  # a block narrower than a group: one group, a dense conv
        if inner % group_size:
            raise FacesError(
                f"group_size {group_size} does not divide a block's {inner} inner channels ({channels} x expansion "
                f"{expansion}): choose a group_size that does, or another width"
            )
        groups = inner // group_size
        scale = ACTIVATION_GAIN * blocks_in_network ** (-1 / 4)  # fix-up: L^(-1/(2m-2)), m = 3
        self.expand = he_init(nn.Conv2d(channels, inner, 1), scale)
        self.mix = he_init(nn.Conv2d(inner, inner, 3, padding=1, groups=groups), scale)
        self.back = nn.Conv2d(inner, channels, 1, bias=False)
        nn.init.zeros_(self.back.weight)  # the block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(x), SLOPE)
        h = F.leaky_relu(self.mix(h), SLOPE)
        return x + self.back(h)


def _stage(channels: int, count: int, expansion: int, group_size: int, total: int) -> nn.Sequential:
    return nn.Sequential(*(Block(channels, expansion, group_size, total) for _ in range(count)))


class R3GANGenerator(nn.Module):
    """R3GAN's G: latents (B, latent_dim) to images (B, 3, S, S), about [-1, 1].

    Args:
        latent_dim: size of z (the paper: 64).
        width: channels at every resolution up to 32 px, halved at each doubling above.
        blocks: residual blocks per resolution (the paper: 2).
        expansion: a block's inner width, as a multiple of its channels (the paper: 2).
        group_size: channels per group of the 3x3 conv (the paper: 16; a narrower block: one group).
        image_size: side of the images, a power of two >= 16 (linked from the data).
        widths: channels at each resolution from 4 px up, instead of ``width`` (e.g. narrower
            stages at the high resolutions, where a block costs the most).
        attributes: attribute names G is conditioned on (linked from ``data.attributes``): their
            values (as +-1) are embedded by a linear layer and concatenated with z.
        embedding: size of the attributes' embedding (the paper: 64).
        stem: how z makes the 4x4 features: ``basis`` (the paper), one coefficient per channel
            of a learned 4x4 basis; ``linear``, a value per channel and position, plus the basis.
    """

    def __init__(
        self,
        latent_dim: int = 64,
        width: int = 256,
        blocks: int = 2,
        expansion: int = 2,
        group_size: int = 16,
        image_size: int = 64,
        widths: list[int] | None = None,
        attributes: list[str] | None = None,
        embedding: int = 64,
        stem: Literal["basis", "linear"] = "basis",
    ) -> None:
        super().__init__()
        if stem not in ("basis", "linear"):
            raise FacesError(f"stem must be 'basis' or 'linear', got {stem!r}")
        stages_widths = stage_widths(width, image_size, widths)
        self.latent_dim, self.image_size, self.stem_kind = latent_dim, image_size, stem
        self.attributes = list(attributes or [])
        total = blocks * len(stages_widths)
        first = stages_widths[4]
        self.embed = he_init(nn.Linear(len(self.attributes), embedding, bias=False), 1.0) if self.attributes else None
        inputs = latent_dim + (embedding if self.attributes else 0)
        per_sample = first if stem == "basis" else first * 4 * 4  # per channel, or per channel and position
        self.coefficients = he_init(nn.Linear(inputs, per_sample, bias=False), 1.0)
        self.basis = nn.Parameter(torch.randn(first, 4, 4))
        stages, previous = [], first
        for resolution, channels in stages_widths.items():
            layers: list[nn.Module] = []
            if resolution > 4:
                if channels != previous:
                    layers.append(he_init(nn.Conv2d(previous, channels, 1, bias=False), 1.0))
                layers.append(Resample(channels, up=True))
            layers.append(_stage(channels, blocks, expansion, group_size, total))
            stages.append(nn.Sequential(*layers))
            previous = channels
        self.stages = nn.Sequential(*stages)
        self.to_rgb = he_init(nn.Conv2d(previous, 3, 1, bias=False), 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.stem(z, labels))

    def stem(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The 4x4 stage's output (B, C, 4, 4): the basis weighted by z (or z's features plus the
        basis), then the stage's blocks."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(signed(labels, self.attributes, "the generator").to(z.dtype))], dim=1)
        coefficients = self.coefficients(z)
        if self.stem_kind == "basis":
            return self.stages[0](self.basis * coefficients[:, :, None, None])
        return self.stages[0](self.basis + coefficients.view(-1, *self.basis.shape))

    def synthesize(self, features: torch.Tensor) -> torch.Tensor:
        """``stem``'s output -> images (B, 3, S, S), not clipped."""
        return self.to_rgb(self.stages[1:](features))


class R3GANDiscriminator(nn.Module):
    """R3GAN's D: images (B, 3, S, S) to logits (B,) and features (B, C) (the 4x4 stage's
    depthwise-conv output, which the linear layer reads).

    Args:
        width, blocks, expansion, group_size, image_size, widths: as for ``R3GANGenerator`` (D mirrors G).
        attributes: attribute names D is conditioned on (linked from ``data.attributes``).
        conditioning: ``projection`` (the attributes' embedding times the features, added to the
            score, as the paper's conditional D projects) or ``auxiliary``.
    """

    def __init__(
        self,
        width: int = 256,
        blocks: int = 2,
        expansion: int = 2,
        group_size: int = 16,
        image_size: int = 64,
        widths: list[int] | None = None,
        attributes: list[str] | None = None,
        conditioning: Conditioning = "projection",
    ) -> None:
        super().__init__()
        stages_widths = stage_widths(width, image_size, widths)
        resolutions = sorted(stages_widths, reverse=True)  # S, S/2, ..., 4
        total = blocks * len(stages_widths)
        self.image_size = image_size
        self.attributes = list(attributes or [])
        self.from_rgb = he_init(nn.Conv2d(3, stages_widths[image_size], 1, bias=False), 1.0)
        stages = []
        for resolution in resolutions:
            channels = stages_widths[resolution]
            layers: list[nn.Module] = [_stage(channels, blocks, expansion, group_size, total)]
            if resolution > 4:
                layers.append(Resample(channels, up=False))
                following = stages_widths[resolution // 2]
                if following != channels:
                    layers.append(he_init(nn.Conv2d(channels, following, 1, bias=False), 1.0))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        last = stages_widths[4]
        self.pool = he_init(nn.Conv2d(last, last, 4, groups=last, bias=False), 1.0)  # (B, C, 4, 4) -> (B, C, 1, 1)
        self.head = he_init(nn.Linear(last, 1, bias=False), 1.0)
        self.attribute_head = AttributeHead(self.attributes, last, conditioning, lambda layer: he_init(layer, 1.0))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        features = self.pool(self.stages(self.from_rgb(x))).flatten(1)  # (B, C)
        logits = self.head(features).flatten()
        projection, attribute_logits = self.attribute_head(features, labels)
        return Scores(logits if projection is None else logits + projection, features, attribute_logits)
