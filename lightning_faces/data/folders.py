"""Any folder of face images: the dataset and its DataModule."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_faces.console import say
from lightning_faces.data.datamodule import FaceDataModule, Source, Split
from lightning_faces.data.images import IMAGE_SUFFIXES, check_crop, describe_modes, image_modes, load_face
from lightning_faces.data.labels import Labels, find_labels
from lightning_faces.errors import FacesError

_described: set[Path] = set()  # folders whose image modes this process has reported


class ImageFolder(Dataset):
    """Any folder of face images (searched recursively), e.g. FFHQ thumbnails, with the rows of
    a labels CSV (``labels.Labels``) as attributes, or none."""

    def __init__(self, root: str | Path, image_size: int, crop: float, labels: Labels | None = None) -> None:
        root = Path(root).expanduser()
        if root.is_file():
            raise FacesError(f"data_dir {root} is a file, not a folder of images")
        if not root.is_dir():
            raise FacesError(f"image folder {root} does not exist: point data.data_dir at a folder of images")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FacesError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
        self.image_size, self.crop = image_size, crop
        files = [p.relative_to(root).as_posix() for p in self.paths]
        self.attributes = labels.for_files(files) if labels is not None else torch.zeros(len(files), 0)
        if root.resolve() not in _described:
            _described.add(root.resolve())
            # 16-bit scans, palettes, CMYK...: converted faithfully, and said once
            line = describe_modes(image_modes(self.paths), str(root))
            if line:
                say(line)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_face(self.paths[index], self.image_size, self.crop), self.attributes[index]


class FolderFaces(Source):
    """Any folder of face images (recursively), trained on whole, no validation; attributes from
    a labels CSV beside the images (``labels.py``), or none.

    Args:
        data_dir: the folder of images.
        crop: side of the centred square crop as a fraction of the image width (1.0 for images
            that are already square faces, such as FFHQ).
        labels: the labels CSV (``None``: ``labels.csv`` in ``data_dir`` when there is one).
    """

    key = "ImageFolderDataModule"  # the name prepared arrays and FID caches have been keyed on since 0.1

    def __init__(self, data_dir: str, crop: float = 1.0, labels: str | None = None) -> None:
        self.data_dir, self.crop = data_dir, check_crop(crop)
        self.labels_path = find_labels(Path(data_dir).expanduser(), labels)
        self.labels = Labels(self.labels_path) if self.labels_path is not None else None
        self.attribute_names = self.labels.names if self.labels is not None else ()

    def attributes_where(self) -> str:
        return f"the columns of {self.labels_path}"

    def read(self, split: Split, image_size: int) -> Dataset:
        return ImageFolder(self.data_dir, image_size, self.crop, self.labels)

    def resolve(self, split: Split) -> Split:
        if split not in ("train", "all"):
            raise FacesError(f"an image folder has no '{split}' split: use real_split train")
        return "all"

    def where(self, split: Split) -> str:
        return f"image folder {self.data_dir}"

    def describe(self, split: Split) -> dict[str, object]:
        folder = Path(self.data_dir).expanduser().resolve()
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        newest = max((p.stat().st_mtime_ns for p in files), default=None)
        described: dict[str, object] = {"folder": str(folder), "crop": self.crop, "files": len(files), "newest": newest}
        if self.labels_path is not None:  # other labels, another prepared array (a flipped 0/1 keeps the size)
            digest = hashlib.sha256(self.labels_path.read_bytes()).hexdigest()
            described["labels"] = [str(self.labels_path.resolve()), digest]
        return described


class ImageFolderDataModule(FaceDataModule):
    """Any folder of face images (``FolderFaces``), trained on whole, no validation.

    Args:
        data_dir, crop, labels: see ``FolderFaces``.
        **kwargs: see ``FaceDataModule`` (``attributes``: columns of the labels CSV, or empty).
    """

    def __init__(self, data_dir: str, crop: float = 1.0, labels: str | None = None, **kwargs: Any) -> None:
        super().__init__(FolderFaces(data_dir, crop, labels), **kwargs)
