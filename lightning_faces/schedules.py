"""Settings that change over training, as functions of the real images seen so far.

Progress is counted in images, as StyleGAN2-ADA and R3GAN count it, so a schedule means the same
at any batch size and on any number of GPUs. Any setting typed ``float | Cosine`` takes one:
in YAML, ``gamma: 0.1`` keeps it fixed, and

    gamma:
      class_path: lightning_faces.schedules.Cosine
      init_args: {start: 2.0, end: 0.2, images: 2_000_000}

moves it from 2 to 0.2 over the first two million images. The GAN logs each scheduled value as
it is used (``train/lr``, ``train/d_r1_gamma``, ...).
"""

from __future__ import annotations

import math

from lightning_faces.errors import FacesError


class Cosine:
    """From ``start`` to ``end`` along half a cosine over the first ``images`` images, then ``end``.

    Args:
        start: the value at the first image.
        end: the value from ``images`` images on.
        images: how many images the change takes (R3GAN: 20 million at 64 px).
    """

    def __init__(self, start: float, end: float, images: int) -> None:
        if images < 1:
            raise FacesError(f"a Cosine schedule needs images of at least 1, got {images}")
        self.start, self.end, self.images = float(start), float(end), int(images)

    def __call__(self, images_seen: int) -> float:
        done = min(max(images_seen, 0) / self.images, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * done))

    def settings(self) -> dict[str, float | int]:
        """What rebuilds it (a checkpoint records these)."""
        return {"start": self.start, "end": self.end, "images": self.images}

    def __repr__(self) -> str:
        return f"Cosine(start={self.start:g}, end={self.end:g}, images={self.images})"


def value(setting: float | Cosine, images_seen: int) -> float:
    """A setting's value after ``images_seen`` images: a fixed number, or its schedule's."""
    return setting(images_seen) if isinstance(setting, Cosine) else float(setting)


def check(
    name: str, setting: float | Cosine, low: float = 0.0, high: float = math.inf, below: float | None = None
) -> float | Cosine:
    """Refuses, in one line, a setting (or a schedule's end points) outside [low, high], or not
    ``below`` a bound it must stay under."""
    points = (setting.start, setting.end) if isinstance(setting, Cosine) else (float(setting),)
    if below is not None and any(not low <= point < below for point in points):
        raise FacesError(f"{name} must be {low:g} or more and below {below:g}, got {setting}")
    if any(not low <= point <= high for point in points):
        limit = f"between {low:g} and {high:g}" if math.isfinite(high) else f"{low:g} or more"
        raise FacesError(f"{name} must be {limit}, got {setting}")
    return setting
