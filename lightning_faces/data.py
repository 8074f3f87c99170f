"""Face datasets and the LightningDataModules that serve them.

Every dataset yields ``(image, attributes)``: image is uint8 (3, S, S), attributes float (A,) in
{0, 1} (A = 40 for CelebA, 0 for a plain folder). Images stay uint8 until they reach the device,
where ``on_after_batch_transfer`` scales them to [-1, 1] and flips them (cheap on any device, and
it keeps the loader workers light).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_faces.errors import FacesError
from lightning_faces.prepared import PreparedImages, check, ensure, prepared_folder
from lightning_faces.prepared import collate as prepared_collate

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
Split = Literal["train", "valid", "test", "all"]
_PARTITION_IDS = {"train": 0, "valid": 1, "test": 2}


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

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_face(self.paths[index], self.image_size, self.crop), torch.zeros(0)


class EpochSampler(DistributedSampler):
    """This rank's share of an epoch's random order, drawn from ``(seed, epoch)``; resumable.

    Each epoch is a fresh permutation of the dataset (its first ``samples_per_epoch`` indices
    when set: a fresh random subset), and rank r takes every W-th index from r. Because any
    epoch's order can be drawn again, a run resumed mid-epoch (a requeued or interrupted job)
    skips the indices its checkpoint had already trained on and sees exactly the batches the
    uninterrupted run would have. A ``DistributedSampler`` so that Lightning keeps it under DDP
    and calls ``set_epoch`` at each epoch.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, samples_per_epoch: int | None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        per_epoch = min(samples_per_epoch or len(dataset), len(dataset))  # type: ignore[arg-type]
        self.num_samples = per_epoch // num_replicas  # this rank's share
        self.total_size = self.num_samples * num_replicas
        self._skip: tuple[int, int] | None = None  # (epoch, indices of this rank already trained on)

    def resume(self, epoch: int, consumed: int) -> None:
        """The next pass over ``epoch`` leaves out its first ``consumed`` indices (of this rank)."""
        self._skip = (epoch, consumed)

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))  # type: ignore[arg-type]
        mine = order[: self.total_size][self.rank :: self.num_replicas].tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            mine = mine[self._skip[1] :]
            self._skip = None
        return iter(mine)


class LatentSeeds(Dataset):
    """Indices 0..n-1 for ``predict``: the module turns each into a latent seeded by it."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


def available_cpus() -> int:
    """CPUs this process may use: SLURM's per-task allocation, else the CPU affinity mask."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK")
    if allocated and allocated.isdigit():
        return int(allocated)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FaceDataModule(L.LightningDataModule):
    """What every face source shares: batching, per-epoch subsets, scaling and flips.

    Args:
        image_size: side of the square images, in pixels.
        batch_size: images per batch (per device under DDP).
        num_workers: loader processes; ``None`` picks min(8, CPUs allocated to this process)
            for image files, and 0 for prepared data (a batch is one memory copy; workers would
            only add inter-process transfer; preparing still decodes with min(8, CPUs)).
        flip: randomly mirror training images left-right.
        samples_per_epoch: train each epoch on a fresh random subset of this many images
            (short epochs on a big dataset); ``None`` uses every image once per epoch.
        predict_samples: how many images ``predict`` generates.
    """

    def __init__(
        self,
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int | None = None,
        flip: bool = True,
        samples_per_epoch: int | None = None,
        predict_samples: int = 64,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise FacesError(f"batch_size must be at least 1, got {batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < batch_size:
            raise FacesError(f"samples_per_epoch {samples_per_epoch} is smaller than batch_size {batch_size}")
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = min(8, available_cpus()) if num_workers is None else num_workers
        self.decode_workers = self.num_workers  # processes that decode image files (prepare)
        self.flip = flip
        self.samples_per_epoch = samples_per_epoch
        self.predict_samples = predict_samples
        self.train_set: Dataset | None = None
        self._resume_position: dict[str, int] | None = None  # from a checkpoint (load_state_dict)
        self._flip_rng: torch.Generator | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # Subclasses say where images come from; None means "this source has no such split".
    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    # Sources of image files can be prepared: decoded once into a memory-mapped uint8 array.
    prepared: bool = False
    prepared_dir: str | None = None

    def source(self, split: Split) -> Dataset:
        """The split read from its image files, decoded on every access."""
        raise NotImplementedError

    def split_dataset(self, split: Split, build: bool = True) -> Dataset:
        """The split as training reads it: prepared (memory-mapped) when ``prepared``, else files.

        A missing prepared split is built here when ``build`` (``prepare_data`` has normally
        built it already, once per node); otherwise the files are read.
        """
        if not self.prepared:
            return self.source(split)
        key = self.describe(split)
        folder = prepared_folder(self.prepared_dir, key)
        if check(folder, key, full=False) is None:
            return PreparedImages(folder)
        source = self.source(split)
        if not build or len(source) == 0:  # type: ignore[arg-type]
            return source
        return PreparedImages(self._ensure(split, source))

    def prepare(self, splits: list[Split]) -> list[Path]:
        """Builds (or checks in full, and rebuilds if damaged) the prepared splits."""
        folders = []
        for split in splits:
            source = None
            if not prepared_folder(self.prepared_dir, self.describe(split)).exists():
                source = self.source(split)
                if len(source) == 0:  # type: ignore[arg-type]
                    continue  # an empty split (no validation images): nothing to prepare
            folders.append(self._ensure(split, source))
        return folders

    def _ensure(self, split: Split, source: Dataset | None) -> Path:
        return ensure(
            (lambda: source) if source is not None else (lambda: self.source(split)),
            self.prepared_dir,
            self.describe(split),
            self.decode_workers,
            f"{type(self).__name__} split '{split}' at {self.image_size}px",
        )

    def fit_splits(self) -> list[Split]:
        """The splits ``fit`` reads (training, and validation when there is one)."""
        return ["all"]

    def splits_in_use(self) -> list[Split]:
        """The splits the trainer's current stage reads."""
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else "fit"
        return {"fit": self.fit_splits(), "validate": self.fit_splits()[1:], "test": ["test"]}.get(stage, [])

    def eval_dataset(self, stage: Literal["validate", "test"]) -> Dataset | None:
        return None

    def real_images(self, split: Split) -> Dataset:
        """Real images of a split, preprocessed as for training but never flipped (for FID)."""
        raise FacesError(f"{type(self).__name__} has no split '{split}' of real images")

    def describe(self, split: Split) -> dict[str, object]:
        """What identifies ``real_images(split)``: FID's cached real statistics are keyed on it."""
        return {"source": type(self).__name__, "split": split, "image_size": self.image_size}

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self.train_dataset()
            if len(self.train_set) < self.batch_size:  # type: ignore[arg-type]
                raise FacesError(
                    f"batch_size {self.batch_size} is larger than the training set "
                    f"({len(self.train_set)} images): lower data.batch_size"  # type: ignore[arg-type]
                )
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self.eval_dataset("validate")
        if stage == "validate" and not self.val_set:
            raise FacesError("there is no validation split with images to validate on: set data.val_split")
        if stage == "test" and self.test_set is None:
            self.test_set = self.eval_dataset("test")
        if stage == "test" and not self.test_set:
            raise FacesError("the test split has no images: choose a dataset with a test split")

    def state_dict(self) -> dict[str, int]:
        """Where training is in its data: the epoch and the batches of it already trained on.

        Saved in checkpoints (Lightning asks at every save); ``train_dataloader`` of a resumed
        run continues from there.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epochs = trainer.fit_loop.epoch_progress.current
        # between epochs (a save at an epoch's end) the batch counter still holds the finished
        # epoch's count: the next epoch has none of its batches trained on yet
        mid_epoch = epochs.started > epochs.completed
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed if mid_epoch else 0
        return {"epoch": trainer.current_epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_position = dict(state) or None

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = None
        if train:
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))  # seed_everything's (the configs set it)
            sampler = EpochSampler(dataset, world, rank, seed, self.samples_per_epoch)
            if self._resume_position:
                position = self._resume_position
                sampler.resume(position["epoch"], position["batches"] * self.batch_size)
                self._resume_position = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,  # training order comes from the EpochSampler
            sampler=sampler,
            drop_last=train,  # equal batches keep batch-norm statistics comparable
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=prepared_collate if isinstance(dataset, PreparedImages) else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or len(self.val_set) == 0:  # type: ignore[arg-type]
            return []  # no validation split: Lightning then skips validation
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(LatentSeeds(self.predict_samples), batch_size=self.batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.predicting:
            return batch
        images, attributes = batch
        images = to_float(images)  # uint8 (B, 3, S, S) -> float in [-1, 1]
        if self.flip and self.trainer is not None and self.trainer.training:
            # drawn from (seed, iteration, rank), not the global RNG (which checkpoints do not
            # hold): a resumed run flips exactly what the uninterrupted one would have
            key = (int(os.environ.get("PL_GLOBAL_SEED", "0")), self.trainer.global_step, self.trainer.global_rank)
            seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)
            if self._flip_rng is None or self._flip_rng.device != images.device:
                self._flip_rng = torch.Generator(device=images.device)
            mirrored = (
                torch.rand(images.shape[0], device=images.device, generator=self._flip_rng.manual_seed(seed)) < 0.5
            )
            images = torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images)
        return images, attributes


class CelebADataModule(FaceDataModule):
    """CelebA from its own folder layout, with its official splits and 40 attributes.

    Args:
        data_dir: the folder that holds ``celeba/`` (as torchvision's CelebA expects).
        split: which images to train on: ``train``, ``valid``, ``test`` or ``all``.
        val_split: the split ``validate`` uses; ``None`` turns validation off.
        crop: side of the centred square crop as a fraction of the image width (0.79 is the
            140-of-178 pixel framing of most CelebA GAN papers); the same at any resolution.
        download: fetch CelebA with torchvision's downloader when it is missing.
        prepared: decode, crop and resize every image once into a memory-mapped uint8 array
            (``python -m lightning_faces prepare``; fit builds it when missing) and train from it;
            ``False`` decodes the image files on every access.
        prepared_dir: where prepared arrays live (``None``: ``~/.cache/lightning_faces/prepared``);
            one folder per source, split, size and crop.
        **kwargs: see ``FaceDataModule``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        split: Split = "train",
        val_split: Split | None = "valid",
        crop: float = 0.79,
        download: bool = False,
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int | None = None,
        flip: bool = True,
        samples_per_epoch: int | None = None,
        predict_samples: int = 64,
        prepared: bool = True,
        prepared_dir: str | None = None,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, flip, samples_per_epoch, predict_samples)
        self.data_dir, self.split, self.val_split = data_dir, split, val_split
        self.crop, self.download = check_crop(crop), download
        self.prepared, self.prepared_dir = prepared, prepared_dir
        if prepared and num_workers is None:
            self.num_workers = 0  # see FaceDataModule: prepared batches need no worker processes

    def prepare_data(self) -> None:
        # runs on one process per node, before setup: the only place that may download
        if self.download and not (Path(self.data_dir) / "celeba" / "list_attr_celeba.txt").exists():
            download_celeba(self.data_dir)
        celeba_folder(self.data_dir)  # fail here, before any training, if the layout is incomplete
        if self.prepared:
            self.prepare(self.splits_in_use())

    def source(self, split: Split) -> Dataset:
        dataset = CelebA(self.data_dir, split, self.image_size, self.crop)
        _check_images_present(dataset)
        return dataset

    def fit_splits(self) -> list[Split]:
        return [self.split] + ([self.val_split] if self.val_split else [])

    def train_dataset(self) -> Dataset:
        dataset = self.split_dataset(self.split)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise FacesError(
                f"CelebA split '{self.split}' under {celeba_folder(self.data_dir)} has no images: "
                "choose another data.split"
            )
        return dataset

    def real_images(self, split: Split) -> Dataset:
        dataset = self.split_dataset(split, build=False)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise FacesError(
                f"CelebA split '{split}' under {celeba_folder(self.data_dir)} has no images to compare against"
            )
        return dataset

    def describe(self, split: Split) -> dict[str, object]:
        folder = Path(self.data_dir).expanduser().resolve() / "celeba"
        listing = folder / "list_attr_celeba.txt"
        # the attribute list changes when images are added or removed
        stamp = listing.stat().st_mtime_ns if listing.exists() else None
        return {**super().describe(split), "folder": str(folder), "crop": self.crop, "listing": stamp}

    def eval_dataset(self, stage: Literal["validate", "test"]) -> Dataset | None:
        split = self.val_split if stage == "validate" else "test"
        if split is None:
            return None
        dataset = self.split_dataset(split)
        if len(dataset) == 0 and stage == "validate":  # type: ignore[arg-type]
            warnings.warn(f"CelebA split '{split}' has no images, so validation is skipped", stacklevel=2)
        return dataset


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
        **kwargs: see ``FaceDataModule``.
    """

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
        prepared: bool = True,
        prepared_dir: str | None = None,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, flip, samples_per_epoch, predict_samples)
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
