"""DiffAugment (Zhao et al., 2020): differentiable augmentation of every image D sees.

Real and fake images pass through the same kinds of random transforms before D, in D's step and
in G's, and G's gradients flow back through them. D then cannot memorize a small training set
by its exact pixels, which is what lets a GAN learn from a few thousand images; because fakes
are augmented too, G is not pushed to generate augmented-looking faces. Random draws are fresh
for every call (torch's global generator on the images' device).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_faces import schedules
from lightning_faces.errors import FacesError
from lightning_faces.schedules import Cosine

Transform = Literal["color", "translation", "cutout"]


def adjust_color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast per image; x (B, C, H, W) in [-1, 1]."""
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness: + U(-0.5, 0.5)
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * (2 * torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype)) + gray  # saturation: x U(0, 2)
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5
    return (x - level) * factor + level  # contrast: x U(0.5, 1.5)


def translate(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shifts each image by up to ``ratio`` of its size in x and y, filling with zeros."""
    b, _, h, w = x.shape
    pad_y, pad_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-pad_y, pad_y + 1, (b, 1), device=x.device)
    shift_x = torch.randint(-pad_x, pad_x + 1, (b, 1), device=x.device)
    padded = nn.functional.pad(x, (pad_x, pad_x, pad_y, pad_y))  # zeros around: (B, C, H+2py, W+2px)
    rows = torch.arange(h, device=x.device)[None] + pad_y - shift_y  # (B, H): source row of each output row
    cols = torch.arange(w, device=x.device)[None] + pad_x - shift_x  # (B, W)
    picked = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)  # advanced indexing put channels last: (B, H, W, C) -> (B, C, H, W)


def cut_out(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zeroes one square of ``ratio`` times the image's size, centred anywhere (it may overhang)."""
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + 1 - size_y % 2, (b, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, w + 1 - size_x % 2, (b, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # (B, H, W)
    return x * (~inside)[:, None].to(x.dtype)


class DiffAugment(nn.Module):
    """Applies the chosen transforms, in order, to a batch in training; nothing in evaluation.

    Args:
        policy: transforms to apply: ``color``, ``translation``, ``cutout`` (the paper's choice
            for few-shot and small-data training is all three).
        translation_ratio: largest shift, as a fraction of the image size (paper: 1/8).
        cutout_ratio: side of the cut-out square, as a fraction of the image size (paper: 1/2).
        probability: the chance that an image is augmented (by the whole policy), fixed or a
            ``schedules.Cosine`` over images seen (R3GAN: 0 -> 0.3 at 64 px); 1: every image.
    """

    def __init__(
        self,
        policy: list[Transform] | None = None,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        probability: float | Cosine = 1.0,
    ) -> None:
        super().__init__()
        self.policy = list(policy) if policy is not None else ["color", "translation", "cutout"]
        unknown = [name for name in self.policy if name not in ("color", "translation", "cutout")]
        if unknown:
            raise FacesError(f"DiffAugment policy has {unknown}: choose from color, translation, cutout")
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio
        self.probability = schedules.check("DiffAugment probability", probability, high=1.0)
        self.now = schedules.value(self.probability, 0)  # the probability at this iteration

    def follow(self, images_seen: int) -> dict[str, float]:
        """Sets this iteration's probability; returns it by name when it follows a schedule."""
        self.now = schedules.value(self.probability, images_seen)
        return {"augment_p": self.now} if isinstance(self.probability, Cosine) else {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training or self.now == 0:
            return images
        augmented = images
        for name in self.policy:
            if name == "color":
                augmented = adjust_color(augmented)
            elif name == "translation":
                augmented = translate(augmented, self.translation_ratio)
            else:
                augmented = cut_out(augmented, self.cutout_ratio)
        if self.now >= 1:
            return augmented
        chosen = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < self.now  # (B, 1, 1, 1)
        return torch.where(chosen, augmented, images)
