"""CelebA in its own folder layout: the listings, their checks, the dataset and its DataModule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

from lightning_faces.data.attributes import CELEBA_ATTRIBUTES
from lightning_faces.data.datamodule import FaceDataModule, Source, Split
from lightning_faces.data.images import IMAGE_SUFFIXES, check_crop, load_face
from lightning_faces.errors import FacesError

_PARTITION_IDS = {"train": 0, "valid": 1, "test": 2}


class CelebA(Dataset):
    """CelebA in its own layout: ``<root>/celeba/{img_align_celeba/, list_eval_partition.txt,
    list_attr_celeba.txt}`` (the layout torchvision uses; bbox and landmark files are not needed)."""

    def __init__(self, root: str | Path, split: Split, image_size: int, crop: float) -> None:
        self.folder = celeba_folder(root)
        self.image_size, self.crop = image_size, crop
        partition = _read_partition(self.folder / "list_eval_partition.txt")
        names, attributes = _read_attributes(self.folder / "list_attr_celeba.txt")
        _reconcile(self.folder, names, partition, split)
        keep = [i for i, name in enumerate(names) if split == "all" or partition.get(name) == _PARTITION_IDS[split]]
        self.filenames = [names[i] for i in keep]
        self.attributes = torch.from_numpy(attributes[keep]) if keep else torch.zeros(0, len(CELEBA_ATTRIBUTES))

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.folder / "img_align_celeba" / self.filenames[index]
        return load_face(path, self.image_size, self.crop), self.attributes[index]


def celeba_folder(root: str | Path) -> Path:
    """Checks the CelebA layout under ``root`` and returns ``root/celeba``, or says what is missing."""
    root = Path(root).expanduser()
    if root.is_file():
        raise FacesError(
            f"data_dir {root} is a file, not a folder: point data.data_dir at the folder that holds celeba/"
        )
    folder = root / "celeba"
    expected = ["img_align_celeba/", "list_eval_partition.txt", "list_attr_celeba.txt"]
    missing = [name for name in expected if not (folder / name.rstrip("/")).exists()]
    if missing:
        raise FacesError(
            f"CelebA not found: {folder} lacks {', '.join(missing)} "
            f"(CelebA's layout is <data_dir>/celeba/{{{', '.join(expected)}}}). "
            "Get img_align_celeba.zip, list_eval_partition.txt and list_attr_celeba.txt from the CelebA "
            f"site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unpack them into {folder}/, "
            "or set data.download: true to try torchvision's downloader"
        )
    return folder


BAD_LISTING = 0.01  # refuse when the listings disagree on more than this fraction of the images


def _reconcile(folder: Path, names: list[str], partition: dict[str, int], split: Split) -> None:
    """Says in one line which images the listings leave out, and refuses when they disagree badly.

    An image file without a row in list_attr_celeba.txt, or a listed image without a row in
    list_eval_partition.txt (for a split other than ``all``), cannot be used; listed images that
    are missing from the folder are refused by ``_check_images_present``.
    """
    listed = set(names)
    files = [n for n in os.listdir(folder / "img_align_celeba") if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    unlisted = sum(1 for n in files if n not in listed)
    unpartitioned = 0 if split == "all" else sum(1 for n in names if n not in partition)
    problems = []
    if unlisted:
        problems.append(f"{unlisted} image files in img_align_celeba/ have no row in list_attr_celeba.txt")
    if unpartitioned:
        problems.append(f"{unpartitioned} listed images have no row in list_eval_partition.txt")
    if not problems:
        return
    total = max(len(files), len(names), 1)
    summary = " and ".join(problems)
    if (unlisted + unpartitioned) / total > BAD_LISTING:
        raise FacesError(
            f"CelebA's files in {folder} disagree: {summary} (of {total}): the download is incomplete or the "
            "files come from different copies; get the three of them again from the same source"
        )
    rank_zero_warn(f"CelebA in {folder}: {summary}; those images are left out")


def _read_partition(path: Path) -> dict[str, int]:
    partition = {}
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise FacesError(f"{path} line {line_number} is not '<image> <0|1|2>': {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def _read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """Parses list_attr_celeba.txt: a count, the 40 names, then '<image> +-1 x 40' per line."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or lines[1].split() != CELEBA_ATTRIBUTES:
        raise FacesError(f"{path} does not start with an image count and CelebA's 40 attribute names")
    names, rows = [], []
    for line_number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 41:
            raise FacesError(f"{path} line {line_number} has {len(fields) - 1} attribute values, expected 40")
        names.append(fields[0])
        rows.append([field == "1" for field in fields[1:]])
    header = lines[0].strip()
    if not header.isdigit():
        raise FacesError(f"{path} line 1 should be the image count, got {header!r}")
    if int(header) != len(names):
        difference = abs(int(header) - len(names))
        if difference / max(int(header), len(names), 1) > BAD_LISTING:
            raise FacesError(
                f"{path} says {int(header)} images but lists {len(names)}: the file is cut short or edited; "
                "get list_attr_celeba.txt again"
            )
        rank_zero_warn(f"{path} says {int(header)} images but lists {len(names)}: using the {len(names)} listed")
    return names, np.asarray(rows, dtype=np.float32).reshape(-1, 40)


class CelebAFaces(Source):
    """CelebA from its own folder layout, with its official splits and 40 attributes.

    Args:
        data_dir: the folder that holds ``celeba/`` (as torchvision's CelebA expects).
        split: which images to train on: ``train``, ``valid``, ``test`` or ``all``.
        val_split: the split ``validate`` uses; ``None`` turns validation off.
        crop: side of the centred square crop as a fraction of the image width (0.79 is the
            140-of-178 pixel framing of most CelebA GAN papers); the same at any resolution.
        download: fetch CelebA with torchvision's downloader when it is missing.
    """

    key = "CelebADataModule"  # the name prepared arrays and FID caches have been keyed on since 0.1
    test_split = "test"

    def __init__(
        self,
        data_dir: str = "data",
        split: Split = "train",
        val_split: Split | None = "valid",
        crop: float = 0.79,
        download: bool = False,
    ) -> None:
        self.data_dir, self.train_split, self.val_split = data_dir, split, val_split
        self.crop, self.download = check_crop(crop), download

    def fetch(self) -> None:
        if self.download and not (Path(self.data_dir) / "celeba" / "list_attr_celeba.txt").exists():
            download_celeba(self.data_dir)
        celeba_folder(self.data_dir)  # fail here, before any training, if the layout is incomplete

    def read(self, split: Split, image_size: int) -> Dataset:
        dataset = CelebA(self.data_dir, split, image_size, self.crop)
        _check_images_present(dataset)
        return dataset

    def where(self, split: Split) -> str:
        return f"CelebA split '{split}' under {celeba_folder(self.data_dir)}"

    def describe(self, split: Split) -> dict[str, object]:
        folder = Path(self.data_dir).expanduser().resolve() / "celeba"
        listing = folder / "list_attr_celeba.txt"
        # the attribute list changes when images are added or removed
        stamp = listing.stat().st_mtime_ns if listing.exists() else None
        return {"folder": str(folder), "crop": self.crop, "listing": stamp}


class CelebADataModule(FaceDataModule):
    """CelebA from its own folder layout (``CelebAFaces``), with its splits and 40 attributes.

    Args:
        data_dir, split, val_split, crop, download: see ``CelebAFaces``.
        **kwargs: see ``FaceDataModule``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        split: Split = "train",
        val_split: Split | None = "valid",
        crop: float = 0.79,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(CelebAFaces(data_dir, split, val_split, crop, download), **kwargs)


def _check_images_present(dataset: CelebA) -> None:
    """Fails early, naming a file, when the attribute list names images the folder lacks."""
    present = set(os.listdir(dataset.folder / "img_align_celeba"))
    missing = [name for name in dataset.filenames if name not in present]
    if missing:
        raise FacesError(
            f"{len(missing)} of {len(dataset)} images listed in list_attr_celeba.txt are missing from "
            f"{dataset.folder / 'img_align_celeba'} (first: {missing[0]}): unpack img_align_celeba.zip completely"
        )


def download_celeba(data_dir: str) -> None:
    """Runs torchvision's CelebA downloader; turns its frequent failures into one clear message."""
    from torchvision.datasets import CelebA as TorchvisionCelebA

    try:
        TorchvisionCelebA(root=data_dir, split="all", download=True)
    except Exception as error:  # Google Drive quota, no network, missing gdown, bad checksum...
        raise FacesError(
            f"downloading CelebA into {Path(data_dir) / 'celeba'} failed ({type(error).__name__}: {error}). "
            "The Google Drive copy is often over quota: download img_align_celeba.zip, "
            "list_eval_partition.txt and list_attr_celeba.txt by hand from the CelebA site "
            f"and unpack them into {Path(data_dir) / 'celeba'}/"
        ) from error
