"""Any folder of face images: the dataset and its DataModule."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from lightning_faces.console import say
from lightning_faces.data.datamodule import FaceDataModule, Split
from lightning_faces.data.images import IMAGE_SUFFIXES, check_crop, describe_modes, image_modes, load_face
from lightning_faces.errors import FacesError

_described: set[Path] = set()  # folders whose image modes this process has reported


class ImageFolder(Dataset):
    """Any folder of face images (searched recursively), e.g. FFHQ thumbnails; no attributes."""

    def __init__(self, root: str | Path, image_size: int, crop: float) -> None:
        root = Path(root).expanduser()
        if root.is_file():
            raise FacesError(f"data_dir {root} is a file, not a folder of images")
        if not root.is_dir():
            raise FacesError(f"image folder {root} does not exist: point data.data_dir at a folder of images")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FacesError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
        self.image_size, self.crop = image_size, crop
        if root.resolve() not in _described:
            _described.add(root.resolve())
            # 16-bit scans, palettes, CMYK...: converted faithfully, and said once
            line = describe_modes(image_modes(self.paths), str(root))
            if line:
                say(line)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_face(self.paths[index], self.image_size, self.crop), torch.zeros(0)


class ImageFolderDataModule(FaceDataModule):
    """Any folder of face images (recursively), trained on whole; no attributes, no validation.

    Args:
        data_dir: the folder of images.
        crop: side of the centred square crop as a fraction of the image width (1.0 for images
            that are already square faces, such as FFHQ).
        prepared: decode, crop and resize every image once into a memory-mapped uint8 array
            (``python -m lightning_faces prepare``; fit builds it when missing) and train from it;
            ``False`` decodes the image files on every access.
        prepared_dir: where prepared arrays live (``None``: ``~/.cache/lightning_faces/prepared``);
            one folder per source, split, size and crop.
        **kwargs: see ``FaceDataModule`` (``attributes`` must stay empty: a folder has none).
    """

    has_attributes = False

    def __init__(
        self,
        data_dir: str,
        crop: float = 1.0,
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int | None = None,
        flip: bool = True,
        samples_per_epoch: int | None = None,
        predict_samples: int = 64,
        attributes: list[str] | str | None = None,
        predict_attributes: str | None = None,
        prepared: bool = True,
        prepared_dir: str | None = None,
        on_device: bool = False,
    ) -> None:
        shared = (image_size, batch_size, num_workers, flip, samples_per_epoch, predict_samples)
        super().__init__(*shared, attributes, predict_attributes, on_device)
        self.data_dir, self.crop = data_dir, check_crop(crop)
        self.prepared, self.prepared_dir = prepared, prepared_dir
        if prepared and num_workers is None:
            self.num_workers = 0  # see FaceDataModule: prepared batches need no worker processes

    def prepare_data(self) -> None:
        if self.prepared:
            self.prepare(self.splits_in_use())

    def source(self, split: Split) -> Dataset:
        return ImageFolder(self.data_dir, self.image_size, self.crop)

    def train_dataset(self) -> Dataset:
        return self.split_dataset("all")

    def real_images(self, split: Split) -> Dataset:
        if split not in ("train", "all"):
            raise FacesError(f"an image folder has no '{split}' split: use real_split train")
        return self.split_dataset("all", build=False)

    def describe(self, split: Split) -> dict[str, object]:
        folder = Path(self.data_dir).expanduser().resolve()
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        newest = max((p.stat().st_mtime_ns for p in files), default=None)
        return {
            **super().describe("all"),
            "folder": str(folder),
            "crop": self.crop,
            "files": len(files),
            "newest": newest,
        }
