"""Procedurally drawn faces: the embedded default dataset that needs no download.

Each face is drawn with pillow from a seed: background, skin tone, head shape and pose, hair
(style and colour), eyes, brows, nose, mouth, and sometimes glasses, beard, moustache, forehead
lines (age) or lipstick. The
drawing is done at twice the target size and downsampled, so edges are antialiased. Each image
also gets the CelebA attributes it shows, and only what it shows (hair colour, bangs, smiling or
open mouth, eyeglasses, goatee, moustache, pale skin, young, ...), so conditional training and its
measurement run offline against ground truth. Image ``i`` of seed ``s`` is the same on every machine.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, TensorDataset

from lightning_faces.data.attributes import CELEBA_ATTRIBUTES
from lightning_faces.data.datamodule import FaceDataModule, Source, Split
from lightning_faces.errors import FacesError

Color = tuple[int, int, int]

SKIN_TONES: list[Color] = [
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 130),
    (198, 134, 94),
    (161, 102, 66),
    (112, 70, 45),
    (84, 52, 34),
]
HAIR_COLORS: dict[str, Color] = {
    "Black_Hair": (30, 26, 24),
    "Brown_Hair": (102, 62, 34),
    "Blond_Hair": (222, 188, 110),
    "Gray_Hair": (170, 168, 166),
}
IRIS_COLORS: list[Color] = [(70, 45, 25), (50, 90, 150), (60, 110, 60), (110, 80, 40)]
LIP_COLORS: list[Color] = [(170, 70, 70), (190, 40, 60), (140, 60, 60)]


def _jitter(color: Color, rng: random.Random, amount: int = 18) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _shade(color: Color, factor: float) -> Color:
    return tuple(max(0, min(255, int(c * factor))) for c in color)  # type: ignore[return-value]


def draw_face(rng: random.Random, size: int) -> tuple[Image.Image, set[str]]:
    """Draws one face on a size x size RGB canvas; returns it and the CelebA attributes it shows."""
    attributes: set[str] = set()
    top, bottom = (
        _jitter((rng.randint(40, 230), rng.randint(40, 230), rng.randint(40, 230)), rng, 0),
        _jitter((rng.randint(20, 200), rng.randint(20, 200), rng.randint(20, 200)), rng, 0),
    )
    gradient = np.linspace(0, 1, size)[:, None, None]
    background = (1 - gradient) * np.array(top) + gradient * np.array(bottom)
    canvas = Image.fromarray(np.broadcast_to(background, (size, size, 3)).astype(np.uint8))

    # the head lives on its own transparent layer so that it can be rolled as a whole
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    s = size / 100.0  # drawing units: the canvas is 100 x 100
    skin_index = rng.randrange(len(SKIN_TONES))
    skin = _jitter(SKIN_TONES[skin_index], rng, 10)
    if skin_index == 0:
        attributes.add("Pale_Skin")
    young = rng.random() < 0.7
    if young:
        attributes.add("Young")
    # older faces: mostly grey hair, and forehead lines (drawn below)
    hair_name = "Gray_Hair" if not young and rng.random() < 0.6 else rng.choice(list(HAIR_COLORS)[:3])
    hair = _jitter(HAIR_COLORS[hair_name], rng, 12)
    cx, cy = 50 + rng.uniform(-4, 4), 52 + rng.uniform(-3, 3)
    half_w, half_h = rng.uniform(17, 22), rng.uniform(23, 28)
    yaw = rng.uniform(-0.3, 0.3)  # turns the face: features slide sideways, far side narrows
    male = rng.random() < 0.5
    style = rng.choices(
        ["long", "short", "bald", "bob"], weights=[0.35, 0.35, 0.08, 0.22] if not male else [0.1, 0.65, 0.15, 0.1]
    )[0]

    def box(x: float, y: float, rx: float, ry: float) -> list[float]:
        return [(x - rx) * s, (y - ry) * s, (x + rx) * s, (y + ry) * s]

    def stroke(units: float) -> int:
        # at least 2 canvas pixels: the canvas is drawn at twice the image size, so thin lines
        # (glasses, forehead lines) stay a whole pixel wide after the downscale
        return max(2, round(units * s))

    # shoulders and neck
    clothes = _jitter((rng.randint(20, 230), rng.randint(20, 230), rng.randint(20, 230)), rng, 0)
    draw.ellipse(box(cx, cy + half_h + 28, 38, 22), fill=clothes)
    draw.rectangle([(cx - 8) * s, (cy + half_h - 6) * s, (cx + 8) * s, (cy + half_h + 12) * s], fill=_shade(skin, 0.85))
    # hair behind the head
    if style == "long":
        draw.rounded_rectangle(box(cx, cy + 8, half_w + 6, half_h + 14), radius=14 * s, fill=hair)
    elif style == "bob":
        draw.ellipse(box(cx, cy - 2, half_w + 6, half_h + 6), fill=hair)
    if style != "bald":
        attributes.add(hair_name)
    else:
        attributes.add("Bald")
    # ears and head
    for side in (-1, 1):
        draw.ellipse(box(cx + side * (half_w + 0.5) + yaw * 4, cy + 2, 3, 5), fill=_shade(skin, 0.95))
    draw.ellipse(box(cx, cy, half_w, half_h), fill=skin)
    # hair on top of the head
    if style in ("short", "long", "bob"):
        draw.chord(box(cx, cy - 3, half_w + 1.5, half_h + 1), 180, 360, fill=hair)
        if rng.random() < 0.35:
            attributes.add("Bangs")
            draw.chord(box(cx + yaw * 6, cy - 10, half_w - 1, 9), 0, 180, fill=hair)
    # a chin beard (CelebA's Goatee) and, drawn with the mouth below, a moustache
    facial_hair = _shade(hair, 0.9) if style != "bald" else (50, 40, 35)
    if male and rng.random() < 0.3:
        draw.chord(box(cx + yaw * 5, cy + 8, half_w - 1, half_h - 6), 20, 160, fill=facial_hair)
        attributes.add("Goatee")
    moustache = male and rng.random() < 0.3
    if moustache:
        attributes.add("Mustache")
    if not attributes & {"Goatee", "Mustache"}:
        attributes.add("No_Beard")
    if not young:
        for line in (0, 1):
            y = cy - half_h * 0.55 + line * 3.5
            draw.line([(cx - 8) * s, y * s, (cx + 8) * s, y * s], fill=_shade(skin, 0.65), width=stroke(1.2))
    if male:
        attributes.add("Male")
    # eyes and brows slide with the yaw
    fx = cx + yaw * 8
    eye_dx, eye_y = rng.uniform(7, 9), cy - rng.uniform(2, 5)
    eye_rx, eye_ry = rng.uniform(3.2, 4.2), rng.uniform(1.6, 2.6)
    if eye_ry < 1.9:
        attributes.add("Narrow_Eyes")
    iris = rng.choice(IRIS_COLORS)
    brow = _shade(hair, 0.8) if style != "bald" else _shade(skin, 0.5)
    brow_lift = rng.uniform(4.5, 6.5)
    for side in (-1, 1):
        ex = fx + side * eye_dx * (1 - side * yaw * 0.6)
        draw.ellipse(box(ex, eye_y, eye_rx, eye_ry), fill=(245, 245, 240))
        draw.ellipse(box(ex + yaw * 2, eye_y, eye_ry * 0.9, eye_ry * 0.9), fill=iris)
        draw.ellipse(box(ex + yaw * 2, eye_y, eye_ry * 0.4, eye_ry * 0.4), fill=(10, 10, 10))
        draw.line(
            [(ex - eye_rx) * s, (eye_y - brow_lift + side * 0.0) * s, (ex + eye_rx) * s, (eye_y - brow_lift - 0.8) * s],
            fill=brow,
            width=stroke(1.6),
        )
    # glasses
    if rng.random() < 0.15:
        attributes.add("Eyeglasses")
        frame = rng.choice([(20, 20, 20), (120, 70, 30), (180, 180, 190)])
        for side in (-1, 1):
            ex = fx + side * eye_dx * (1 - side * yaw * 0.6)
            draw.ellipse(box(ex, eye_y, eye_rx + 2.6, eye_ry + 2.8), outline=frame, width=stroke(1.6))
        draw.line(
            [(fx - eye_dx + eye_rx + 2) * s, eye_y * s, (fx + eye_dx - eye_rx - 2) * s, eye_y * s],
            fill=frame,
            width=stroke(1.6),
        )
    # nose
    nose_y = cy + rng.uniform(5, 8)
    draw.polygon(
        [(fx * s, (eye_y + 2) * s), ((fx + 2.5 + yaw * 3) * s, nose_y * s), ((fx - 2.0 + yaw * 3) * s, nose_y * s)],
        fill=_shade(skin, 0.88),
    )
    # mouth: smiling, neutral, or open
    mouth_y, mouth_w = cy + rng.uniform(12, 15), rng.uniform(5, 8)
    if not male and rng.random() < 0.5:
        lips = rng.choice(LIP_COLORS)
        attributes.add("Wearing_Lipstick")
    else:
        lips = _shade(skin, 0.7)
    mood = rng.choice(["smile", "neutral", "open"])
    mouth_box = box(fx, mouth_y, mouth_w, 3.5)
    if mood == "smile":
        attributes.add("Smiling")
        draw.chord(mouth_box, 0, 180, fill=lips)
        draw.chord(box(fx, mouth_y + 0.3, mouth_w - 1.5, 2.0), 0, 180, fill=(250, 250, 245))
    elif mood == "open":
        attributes.add("Mouth_Slightly_Open")
        draw.ellipse(box(fx, mouth_y + 1, mouth_w * 0.6, 2.6), fill=lips)
        draw.ellipse(box(fx, mouth_y + 1, mouth_w * 0.4, 1.5), fill=(60, 20, 25))
    else:
        draw.line([(fx - mouth_w) * s, mouth_y * s, (fx + mouth_w) * s, mouth_y * s], fill=lips, width=stroke(1.8))
    if moustache:
        draw.rounded_rectangle(box(fx, mouth_y - 3.6, mouth_w + 1.5, 2.2), radius=1.5 * s, fill=facial_hair)
    if rng.random() < 0.3:
        attributes.add("Rosy_Cheeks")
        for side in (-1, 1):
            blush = tuple((2 * c + r) // 3 for c, r in zip(skin, (235, 110, 110), strict=True))
            draw.ellipse(box(fx + side * 11, cy + 7, 3.5, 2.2), fill=blush)

    roll = rng.uniform(-12, 12)
    layer = layer.rotate(roll, resample=Image.Resampling.BICUBIC, center=(cx * s, cy * s))
    canvas.paste(layer, (0, 0), layer)
    # zoom 1.25x around the head, so the face fills the frame as in CelebA's usual crop
    margin = 0.1 * size
    canvas = canvas.resize((size, size), Image.Resampling.BICUBIC, box=(margin, margin, size - margin, size - margin))
    return canvas, attributes


def render_faces(count: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``count`` faces: uint8 images (N, 3, S, S) and float attributes (N, 40) in {0, 1}."""
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    attributes = np.zeros((count, len(CELEBA_ATTRIBUTES)), dtype=np.float32)
    column = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        face, shown = draw_face(rng, 2 * image_size)
        images[index] = np.asarray(face.resize((image_size, image_size), Image.Resampling.LANCZOS))
        for name in shown:
            attributes[index, column[name]] = 1.0
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(attributes)


class DrawnFaces(Source):
    """Procedurally drawn faces (``draw_face``), rendered into memory when first read; no download.

    Rendering takes about 5 s per 10,000 faces at 32x32 and 16 s at 64x64 on one CPU core.

    Args:
        num_images: size of the training set.
        num_val_images: size of the validation set (and of the test set), drawn from other
            seeds (0 turns both off).
        seed: which faces: the same seed gives the same images everywhere.
    """

    key = "SyntheticFacesDataModule"  # the name FID caches have been keyed on since 0.1
    files = False
    train_split = "train"

    def __init__(self, num_images: int = 8192, num_val_images: int = 512, seed: int = 0) -> None:
        self.num_images, self.num_val_images, self.seed = num_images, num_val_images, seed
        self.val_split, self.test_split = ("valid", "test") if num_val_images > 0 else (None, None)

    def read(self, split: Split, image_size: int) -> Dataset:
        split = split if split == "test" and self.test_split else self.resolve(split)
        count = self.num_images if split == "train" else self.num_val_images
        offset = ("train", "valid", "test").index(split)  # other seeds: faces disjoint from training's
        return TensorDataset(*render_faces(count, image_size, self.seed + offset * 7919))

    def resolve(self, split: Split) -> Split:
        if split == "train" or (split == "valid" and self.num_val_images > 0):
            return split
        raise FacesError(f"drawn faces have splits 'train' and 'valid' (with num_val_images > 0), not '{split}'")

    def describe(self, split: Split) -> dict[str, object]:
        return {"seed": self.seed, "count": self.num_images if split == "train" else self.num_val_images}


class SyntheticFacesDataModule(FaceDataModule):
    """Drawn faces (``DrawnFaces``), rendered once into memory at setup.

    Args:
        num_images, num_val_images, seed: see ``DrawnFaces``.
        **kwargs: see ``FaceDataModule``.
    """

    def __init__(self, num_images: int = 8192, num_val_images: int = 512, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(DrawnFaces(num_images, num_val_images, seed), prepared=False, prepared_dir=None, **kwargs)
