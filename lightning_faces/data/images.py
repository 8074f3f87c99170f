"""Image conversions every face source shares: decode, centre-crop, resize, and uint8 <-> float."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lightning_faces.errors import FacesError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


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
    face = to_rgb(image).resize((image_size, image_size), Image.Resampling.LANCZOS, box=box)
    return np.array(face, dtype=np.uint8)  # a writable copy that torch can share


# PIL's names for the modes a face image may come in, for the line that counts them
MODE_NAMES = {
    "1": "1-bit",
    "L": "8-bit greyscale",
    "LA": "greyscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGBA": "RGB with alpha",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "I": "32-bit integer",
    "F": "32-bit float",
}
WHITE = (255, 255, 255)  # what transparent pixels are laid over


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image PIL opens, as 8-bit RGB with its brightness kept.

    PIL's own ``convert("RGB")`` clips values above 255, so a 16-bit image (mode ``I;16``) comes
    out all white and a float image in [0, 1] all black. Here deeper images are scaled down:
    16-bit modes by 257 (65535 -> 255); 32-bit integers (``I``) and floats (``F``) by the range
    their values occupy ([0, 1] for floats, else 8-bit, 16-bit or 32-bit, whichever holds the
    largest value; a dark 16-bit image whose values all stay below 256 is read as 8-bit, and
    negative floats as 0). Transparent pixels (an alpha channel, or PNG's transparent colour) are
    laid over white; every other mode (palette, CMYK, YCbCr, Lab, 1-bit) goes through PIL's own
    conversion.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
        top = values.max(initial=0.0)
        if mode.startswith("I;16"):
            full = 65535.0
        elif mode == "F" and top <= 1.0:
            full = 1.0
        else:
            full = next(scale for scale in (255.0, 65535.0, 2.0**31 - 1, np.inf) if top <= scale)
            full = top if full == np.inf else full  # floats beyond 32-bit integers: their own range
        grey = np.rint(values * (255.0 / full)).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in image.info:  # an alpha channel, or a
        rgba = image.convert("RGBA")  # transparent colour (PNG's tRNS, in P, L and RGB images)
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def image_modes(paths: Iterable[Path]) -> Counter[str]:
    """How many of ``paths`` are in each PIL mode, read from their headers (no pixels decoded)."""
    modes: Counter[str] = Counter()
    for path in paths:
        try:
            with Image.open(path) as image:
                modes[image.mode] += 1
        except (OSError, UnidentifiedImageError, ValueError):
            modes["unreadable"] += 1  # named, with the file, when it is loaded
    return modes


def describe_modes(modes: Counter[str], source: str) -> str | None:
    """One line on the images of ``source`` that are not 8-bit RGB (None when all are)."""
    unusual = {mode: count for mode, count in modes.items() if mode not in ("RGB", "unreadable")}
    if not unusual:
        return None
    total = sum(modes.values())
    parts = []
    for mode, count in sorted(unusual.items(), key=lambda item: (-item[1], item[0])):
        name = "16-bit greyscale" if mode.startswith("I;16") else MODE_NAMES.get(mode, "unusual")
        parts.append(f"{count} {name} ({mode})")
    return (
        f"{source}: {sum(unusual.values())} of {total} images are not 8-bit RGB: {', '.join(parts)}; "
        "each is converted to 8-bit RGB with its brightness kept"
    )


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
