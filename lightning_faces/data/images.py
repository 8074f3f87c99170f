"""Image conversions every face source shares: decode, centre-crop, resize, and uint8 <-> float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lightning_faces.errors import FacesError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def crop_and_resize(image: Image.Image, image_size: int, crop: float) -> np.ndarray:
    """Cuts the centred square of side ``crop * min(width, height)`` and resizes it to (S, S, 3) uint8.

    The box is in fractions of the image, so the official 178x218 CelebA images and half-size
    copies give the same framing, and a landscape image is cut from its height as a portrait is
    from its width; PIL resamples from the fractional box directly (antialiased).
    """
    width, height = image.size
    side = crop * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    face = image.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS, box=box)
    return np.array(face, dtype=np.uint8)  # a writable copy that torch can share


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float images in [-1, 1], the range G's tanh produces."""
    return images.to(torch.float32, copy=True).div_(127.5).sub_(1.0)  # in place: one allocation, not three


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 in [0, 255], rounded."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def check_crop(crop: float) -> float:
    if not 0 < crop <= 1:
        raise FacesError(f"crop must be a fraction of the image width in (0, 1], got {crop}")
    return crop


def load_face(path: Path, image_size: int, crop: float) -> torch.Tensor:
    """Reads one image file into a (3, S, S) uint8 tensor; names the file if it is unreadable."""
    try:
        with Image.open(path) as image:
            array = crop_and_resize(image, image_size, crop)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise FacesError(f"cannot read image {path}: {error} (replace or delete the file)") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
