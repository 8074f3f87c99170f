"""Progressive GAN networks (Karras et al., 2018): one block per resolution from 4x4 up, with fade-in.

Both networks are built whole, for the final ``image_size``, and run up to a *level* with a
fade-in weight *alpha* (buffers, so they travel in checkpoints and under DDP): level 0 works at
4x4, level k at 4 * 2**k. While a new block fades in (alpha < 1), G's output is the new block's
image blended with the 2x upsampled image of the level below, and D reads the image both through
the new block and, halved, through the level below's input layer, blended the same way. Building
every block from the start keeps the parameter set, the state dict and the optimizers' state the
same in every phase; blocks above the level get no gradient until they join.

ProGAN's other ingredients, as the paper and its official code define them:

- *equalized learning rate*: weights drawn from N(0, 1) and scaled at run time by He's constant
  sqrt(2 / fan_in), so that Adam's per-parameter step sizes act alike on every layer;
- *pixel norm* in G after each convolution: each pixel's feature vector scaled to unit RMS;
- *minibatch standard deviation* in D's last block: the mean over features of the standard
  deviation over groups of images, appended as one more channel, so D can see a lack of variety.

G ends in a linear toRGB layer (no tanh), as ProGAN's; images are used in [-1, 1] and clamped
when saved.

``lightning_faces.growth`` drives ``grow`` over training (``GAN(growth=...)``); without it the
networks stay at their default, the final level with alpha 1 (a fixed-size ProGAN network).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lightning_faces.errors import FacesError
from lightning_faces.nets.conditioning import AttributeHead, ConditionalInput, Conditioning
from lightning_faces.nets.contract import Scores, check_image_size


class EqualizedConv2d(nn.Module):
    """A convolution whose weights are N(0, 1), scaled by gain / sqrt(fan_in) in every forward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """A linear layer with N(0, 1) weights scaled by gain / sqrt(fan_in) in every forward."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scales each pixel's feature vector (dim 1) to unit root mean square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class MinibatchStdDev(nn.Module):
    """Appends one channel: the standard deviation over groups of ``group_size`` images, averaged
    over channels and pixels, the same value in every pixel of every image of a group."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        group = math.gcd(batch, self.group_size)  # ProGAN needs B % G == 0; take the largest G that fits
        y = x.reshape(group, -1, channels, height, width)  # (G, B/G, C, H, W): group g holds images g, g+B/G, ...
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (B/G, C, H, W)
        stat = std.mean(dim=(1, 2, 3))  # (B/G,)
        stat = stat.repeat(group).reshape(batch, 1, 1, 1).expand(batch, 1, height, width)
        return torch.cat([x, stat.to(x.dtype)], dim=1)


def _channels(width: int, image_size: int, resolution: int, max_channels: int) -> int:
    """Channels at a resolution: ``width`` at the final one, doubling each halving, capped."""
    return min(max_channels, width * image_size // resolution)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class _Growing(nn.Module):
    """The level and fade-in state both networks share."""

    levels: int

    def _init_state(self, levels: int) -> None:
        self.levels = levels
        self.register_buffer("level", torch.tensor(levels - 1))
        self.register_buffer("alpha", torch.tensor(1.0))

    def grow(self, level: int, alpha: float = 1.0) -> None:
        """Runs the network up to ``level`` (0: 4x4), blending the top block in by ``alpha``."""
        if not 0 <= level < self.levels:
            raise FacesError(f"level {level} is out of range: this network has levels 0 .. {self.levels - 1}")
        if not 0.0 <= alpha <= 1.0 or (level == 0 and alpha != 1.0):
            raise FacesError(f"alpha must be in [0, 1] (and 1 at level 0), got {alpha} at level {level}")
        self.level.fill_(level)
        self.alpha.fill_(alpha)

    @property
    def resolution(self) -> int:
        """The side of the images at the current level."""
        return 4 * 2 ** int(self.level)

    def newest_parameters(self) -> list[nn.Parameter]:
        """The parameters of the current level's own layers (its block and RGB layer)."""
        level = int(self.level)
        rgb = self.to_rgb if hasattr(self, "to_rgb") else self.from_rgb
        block = list(self.blocks[level - 1].parameters()) if level > 0 else []
        return block + list(rgb[level].parameters())


class ProgressiveGenerator(_Growing):
    """Maps latents (B, latent_dim) to images (B, channels, R, R), R the current level's resolution.

    Args:
        latent_dim: size of z (pixel-normalized on entry, as in ProGAN).
        width: channels at the final resolution; each halving doubles them, up to ``max_channels``.
        image_size: the final side, a power of two >= 16 (linked from the data).
        channels: image channels.
        max_channels: the cap on channels (ProGAN: 512).
        attributes: attribute names G is conditioned on (concatenated with z as +-1).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        width: int = 32,
        image_size: int = 64,
        channels: int = 3,
        max_channels: int = 256,
        attributes: list[str] | None = None,
    ) -> None:
        super().__init__()
        levels = check_image_size(image_size, "the progressive networks") - 1  # 4x4 .. image_size
        self.latent_dim, self.image_size = latent_dim, image_size
        self.attributes = list(attributes or [])
        self.input = ConditionalInput(self.attributes)
        first = _channels(width, image_size, 4, max_channels)
        self.first = EqualizedLinear(latent_dim + len(self.attributes), first * 16, gain=math.sqrt(2) / 4)
        self.first_conv = EqualizedConv2d(first, first, 3)
        blocks, to_rgb = [], [EqualizedConv2d(first, channels, 1, gain=1.0)]
        for level in range(1, levels):
            in_ch = _channels(width, image_size, 4 * 2 ** (level - 1), max_channels)
            out_ch = _channels(width, image_size, 4 * 2**level, max_channels)
            blocks.append(nn.ModuleList([EqualizedConv2d(in_ch, out_ch, 3), EqualizedConv2d(out_ch, out_ch, 3)]))
            to_rgb.append(EqualizedConv2d(out_ch, channels, 1, gain=1.0))
        self.blocks, self.to_rgb = nn.ModuleList(blocks), nn.ModuleList(to_rgb)
        self._init_state(levels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.stem(z, labels))

    def stem(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The 4x4 block's activations (B, C4, 4, 4): dense layer, then 3x3 conv."""
        z = pixel_norm(self.input(z, labels))
        x = pixel_norm(_lrelu(self.first(z).view(z.shape[0], -1, 4, 4)))
        return pixel_norm(_lrelu(self.first_conv(x)))

    def synthesize(self, x: torch.Tensor) -> torch.Tensor:
        """``stem``'s activations -> images at the current level's resolution."""
        level, alpha = int(self.level), float(self.alpha)
        below = x
        for block in self.blocks[:level]:
            below = x
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for conv in block:
                x = pixel_norm(_lrelu(conv(x)))
        image = self.to_rgb[level](x)
        if alpha < 1.0:  # fading in: the level below's image, doubled, blended with the new block's
            old = F.interpolate(self.to_rgb[level - 1](below), scale_factor=2, mode="nearest")
            image = torch.lerp(old, image, alpha)
        return image


class ProgressiveDiscriminator(_Growing):
    """Maps images (B, channels, R, R) at the current level's resolution to real/fake logits (B,).

    ``forward`` returns ``Scores(logits, features, attribute_logits)``: the features are the
    dense layer's activations (B, C4) that the real/fake head, feature matching and the attribute
    head read.

    Args:
        width: channels at the final resolution; each halving doubles them, up to ``max_channels``.
        image_size: the final side, a power of two >= 16 (linked from the data).
        channels: image channels.
        max_channels: the cap on channels.
        group_size: images per minibatch-standard-deviation group (ProGAN: 4).
        attributes, conditioning: as for the other discriminators (``nets.conditioning``).
    """

    def __init__(
        self,
        width: int = 32,
        image_size: int = 64,
        channels: int = 3,
        max_channels: int = 256,
        group_size: int = 4,
        attributes: list[str] | None = None,
        conditioning: Conditioning = "projection",
    ) -> None:
        super().__init__()
        levels = check_image_size(image_size, "the progressive networks") - 1
        self.image_size = image_size
        from_rgb, blocks = [], []
        for level in range(levels):
            out_ch = _channels(width, image_size, 4 * 2**level, max_channels)
            from_rgb.append(EqualizedConv2d(channels, out_ch, 1))
            if level > 0:  # level k's block takes 4*2^k pixels down to half, into level k-1's channels
                lower = _channels(width, image_size, 4 * 2 ** (level - 1), max_channels)
                blocks.append(nn.ModuleList([EqualizedConv2d(out_ch, out_ch, 3), EqualizedConv2d(out_ch, lower, 3)]))
        self.from_rgb, self.blocks = nn.ModuleList(from_rgb), nn.ModuleList(blocks)
        last = _channels(width, image_size, 4, max_channels)
        self.stddev = MinibatchStdDev(group_size)
        self.last_conv = EqualizedConv2d(last + 1, last, 3)
        self.dense = EqualizedLinear(last * 16, last)
        self.head = EqualizedLinear(last, 1, gain=1.0)
        self.attributes = list(attributes or [])
        self.attribute_head = AttributeHead(self.attributes, last, conditioning)
        self._init_state(levels)

    def _block(self, level: int, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[level - 1]:
            x = _lrelu(conv(x))
        return F.avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        level, alpha = int(self.level), float(self.alpha)
        if x.shape[-1] != self.resolution:
            raise FacesError(f"D is at {self.resolution}x{self.resolution} (level {level}), got {x.shape[-1]}px images")
        h = _lrelu(self.from_rgb[level](x))
        if level > 0:
            h = self._block(level, h)
            if alpha < 1.0:  # fading in: the image halved through the level below's input layer
                old = _lrelu(self.from_rgb[level - 1](F.avg_pool2d(x, 2)))
                h = torch.lerp(old, h, alpha)
            for lower in range(level - 1, 0, -1):
                h = self._block(lower, h)
        h = _lrelu(self.last_conv(self.stddev(h)))  # (B, C4, 4, 4)
        features = _lrelu(self.dense(h.flatten(1)))  # (B, C4)
        logits = self.head(features).flatten()
        projection, attribute_logits = self.attribute_head(features, labels)
        return Scores(logits if projection is None else logits + projection, features, attribute_logits)
