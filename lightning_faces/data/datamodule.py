"""The base LightningDataModule of every face source, and the resumable sampler it trains with.

Every dataset yields ``(image, attributes)``: image is uint8 (3, S, S), attributes float (A,) in
[0, 1], the source's ``attribute_names`` in order (CelebA's 40 for CelebA and the drawn faces, a
labels CSV's columns for a folder, none for a folder without one). Images stay uint8 until they reach the
device, where ``on_after_batch_transfer`` scales them to [-1, 1], flips them (cheap on any device,
and it keeps the loader workers light) and keeps the attribute columns the run conditions on.
"""

from __future__ import annotations

import abc
import os
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_faces.data.attributes import (
    CELEBA_ATTRIBUTES,
    attribute_columns,
    dataset_attributes,
    parse_attribute_values,
    select_attributes,
)
from lightning_faces.data.images import to_float
from lightning_faces.data.prepared import PreparedImages, check, ensure, prepared_folder
from lightning_faces.data.prepared import collate as prepared_collate
from lightning_faces.errors import FacesError

Split = Literal["train", "valid", "test", "all"]


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


class Positions(Dataset):
    """Positions 0..n-1 in the training set, batched as one index tensor (``data.on_device``:
    the loader hands out positions, the images are gathered from the array on the device)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.tensor(indices, dtype=torch.long)


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch


def whole_arrays(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A training set's images (N, 3, S, S) uint8 and attributes (N, 40) as two tensors, without a
    copy where they already are arrays (prepared, memory-mapped; drawn, in memory); else None."""
    if isinstance(dataset, PreparedImages):
        images, attributes = dataset.arrays
        with warnings.catch_warnings():  # read-only mappings: nothing here writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(images), torch.from_numpy(attributes)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    return None


class LatentSeeds(Dataset):
    """What ``predict`` renders: index i, and the attribute values asked for.

    Each item is ``(i, values, asked)``: the module turns i into a latent seeded by it, and sets
    the attributes where ``asked`` is 1 to ``values`` (the others come from real faces).
    """

    def __init__(self, count: int, values: torch.Tensor, asked: torch.Tensor) -> None:
        self.count, self.values, self.asked = count, values, asked

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return index, self.values, self.asked


def available_cpus() -> int:
    """CPUs this process may use: SLURM's per-task allocation, else the CPU affinity mask."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK")
    if allocated and allocated.isdigit():
        return int(allocated)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Source(abc.ABC):
    """Where a ``FaceDataModule``'s images come from: the part that differs between datasets.

    A source reads a split of its images at a size, decoded on every access (``read``); the
    datamodule prepares them once into an array when they are image files, batches, scales and
    flips them. ``CelebAFaces``, ``FolderFaces`` and ``DrawnFaces`` are the sources this package has.
    """

    key = ""  # the name prepared arrays and FID's cached statistics are keyed on
    attribute_names: tuple[str, ...] = tuple(CELEBA_ATTRIBUTES)  # the columns of its attribute rows
    files = True  # read from image files: prepared once into an array unless data.prepared is false
    train_split: Split = "all"  # what fit trains on
    val_split: Split | None = None  # what validate (and fit's validation) reads; None: none
    test_split: Split | None = None  # what test reads; None: none

    @abc.abstractmethod
    def read(self, split: Split, image_size: int) -> Dataset:
        """The split's images (uint8 (3, S, S)) and attribute rows, decoded on every access."""

    def where(self, split: Split) -> str:
        """The split, named for a message ("CelebA split 'valid' under data/celeba")."""
        return f"{self.key} split '{split}'"

    def attributes_where(self) -> str:
        """Whose attribute names ``attribute_names`` are, for messages ("CelebA's")."""
        return "CelebA's"

    def resolve(self, split: Split) -> Split:
        """The split read for a name FID's ``real_split`` gives (a folder's ``train`` is all of
        it); refuses, in one line, a split this source does not have."""
        return split

    def describe(self, split: Split) -> dict[str, object]:
        """What identifies the split's images beyond their size (a folder, a crop, a seed)."""
        return {}

    def fetch(self) -> None:
        """Runs before any split is read, once per node: downloads, checks the folder layout."""
        return None  # drawn faces and folders: nothing to fetch


class FaceDataModule(L.LightningDataModule):
    """Faces from a ``source``, batched: per-epoch subsets, resumable order, scaling and flips.

    Args:
        source: where the images come from (``CelebAFaces``, ``FolderFaces``, ``DrawnFaces``);
            ``CelebADataModule``, ``ImageFolderDataModule`` and ``SyntheticFacesDataModule``
            build one from their own arguments.
        image_size: side of the square images, in pixels.
        batch_size: images per batch (per device under DDP).
        num_workers: loader processes; ``None`` picks min(8, CPUs allocated to this process)
            for image files, and 0 for prepared or drawn data (a batch is one memory copy; workers
            would only add inter-process transfer; preparing still decodes with min(8, CPUs)).
        flip: randomly mirror training images left-right.
        samples_per_epoch: train each epoch on a fresh random subset of this many images
            (short epochs on a big dataset); ``None`` uses every image once per epoch.
        predict_samples: how many images ``predict`` generates.
        attributes: CelebA attributes to condition on, by name (``[Male, Eyeglasses]``), ``all``
            for the 40, or none (unconditional); the CLI links them into the networks.
        predict_attributes: attribute values ``predict`` asks for, e.g. ``Eyeglasses=1,Male=0``;
            the others are taken from real faces.
        prepared: decode, crop and resize image files once into a memory-mapped uint8 array
            (``python -m lightning_faces prepare``; fit builds it when missing) and train from it;
            ``False`` decodes the files on every access. Drawn faces are in memory already.
        prepared_dir: where prepared arrays live (``None``: ``~/.cache/lightning_faces/prepared``);
            one folder per source, split, size and crop.
        on_device: copy the whole training set (uint8) to the training device once, and gather,
            flip and scale each batch there: no loader work and no copy per batch. The same
            batches as without it (same order, same flips). Needs the images in one array:
            prepared data, or the drawn faces. Costs the array's size in device memory on every
            rank (CelebA at 64x64: 2.5 GB).
    """

    def __init__(
        self,
        source: Source,
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
        super().__init__()
        if batch_size < 1:
            raise FacesError(f"batch_size must be at least 1, got {batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < batch_size:
            raise FacesError(f"samples_per_epoch {samples_per_epoch} is smaller than batch_size {batch_size}")
        if predict_samples < 1:
            raise FacesError(f"predict_samples must be at least 1 (the images predict writes), got {predict_samples}")
        self.source = source
        self.image_size = image_size
        self.batch_size = batch_size
        self.prepared, self.prepared_dir = prepared and source.files, prepared_dir
        self.decode_workers = min(8, available_cpus()) if num_workers is None else num_workers  # prepare's
        in_memory = self.prepared or not source.files  # a batch is one copy: no worker processes
        self.num_workers = (0 if in_memory else self.decode_workers) if num_workers is None else num_workers
        self.flip = flip
        self.samples_per_epoch = samples_per_epoch
        self.predict_samples = predict_samples
        known = source.attribute_names
        if attributes and not known:
            raise FacesError(
                f"{type(self).__name__} images have no attribute labels, so data.attributes must be empty: "
                "put a labels.csv beside the images (file,NAME,...; README 'Your own labels') or set data.labels"
            )
        self.attributes = select_attributes(attributes, known, source.attributes_where())
        self.attribute_columns = attribute_columns(self.attributes, known)
        self.predict_attributes = parse_attribute_values(predict_attributes, self.attributes)
        self.on_device = on_device
        self._device_arrays: tuple[torch.Tensor, torch.Tensor] | None = None  # on_device: the training set
        self.train_set: Dataset | None = None
        self._resume_position: dict[str, int] | None = None  # from a checkpoint (load_state_dict)
        self._position: tuple[int, int] | None = None  # (epoch, its batches trained on so far)
        self._flip_rng: torch.Generator | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        # one process per node, before setup: the only place that may download
        self.source.fetch()
        if self.prepared:
            self.prepare(self.splits_in_use())

    def split_dataset(self, split: Split, build: bool = True) -> Dataset:
        """The split as training reads it: prepared (memory-mapped) when ``prepared``, else read.

        A missing prepared split is built here when ``build`` (``prepare_data`` has normally
        built it already, once per node); otherwise the files are read.
        """
        if not self.prepared:
            return self.source.read(split, self.image_size)
        key = self.describe(split)
        folder = prepared_folder(self.prepared_dir, key)
        if check(folder, key, full=False) is None:
            return PreparedImages(folder)
        source = self.source.read(split, self.image_size)
        if not build or len(source) == 0:  # type: ignore[arg-type]
            return source
        return PreparedImages(self._ensure(split, source))

    def prepare(self, splits: list[Split]) -> list[Path]:
        """Builds (or checks in full, and rebuilds if damaged) the prepared splits."""
        folders = []
        for split in splits:
            source = None
            if not prepared_folder(self.prepared_dir, self.describe(split)).exists():
                source = self.source.read(split, self.image_size)
                if len(source) == 0:  # type: ignore[arg-type]
                    continue  # an empty split (no validation images): nothing to prepare
            folders.append(self._ensure(split, source))
        return folders

    def _ensure(self, split: Split, source: Dataset | None) -> Path:
        return ensure(
            (lambda: source) if source is not None else (lambda: self.source.read(split, self.image_size)),
            self.prepared_dir,
            self.describe(split),
            self.decode_workers,
            f"{type(self).__name__} split '{split}' at {self.image_size}px",
        )

    def fit_splits(self) -> list[Split]:
        """The splits ``fit`` reads (training, and validation when there is one)."""
        source = self.source
        return [source.train_split] + ([source.val_split] if source.val_split else [])

    def splits_in_use(self) -> list[Split]:
        """The splits the trainer's current stage reads."""
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else "fit"
        test = [self.source.test_split] if self.source.test_split else []
        return {"fit": self.fit_splits(), "validate": self.fit_splits()[1:], "test": test}.get(stage, [])

    def train_dataset(self) -> Dataset:
        split = self.source.train_split
        dataset = self.split_dataset(split)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise FacesError(f"{self.source.where(split)} has no images: choose another data.split")
        return dataset

    def eval_dataset(self, stage: Literal["validate", "test"]) -> Dataset | None:
        split = self.source.val_split if stage == "validate" else self.source.test_split
        if split is None:
            return None
        dataset = self.split_dataset(split)
        if len(dataset) == 0 and stage == "validate":  # type: ignore[arg-type]
            warnings.warn(f"{self.source.where(split)} has no images, so validation is skipped", stacklevel=2)
        return dataset

    def real_images(self, split: Split) -> Dataset:
        """Real images of a split, preprocessed as for training but never flipped (for FID)."""
        split = self.source.resolve(split)
        drawn = {self.source.train_split: self.train_set, self.source.val_split: self.val_set}.get(split)
        if not self.source.files and drawn is not None:
            return drawn  # in memory already: not drawn again (files are read afresh, as FID's key counts them)
        dataset = self.split_dataset(split, build=False)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise FacesError(f"{self.source.where(split)} has no images to compare against")
        return dataset

    def describe(self, split: Split) -> dict[str, object]:
        """What identifies ``real_images(split)``: FID's cached real statistics are keyed on it."""
        split = self.source.resolve(split)
        return {"source": self.source.key, "split": split, "image_size": self.image_size, **self.source.describe(split)}

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._position = None  # counted again from this fit's first batch (a checkpoint's comes after setup)
        if stage == "fit" and self.train_set is None:
            self.train_set = self.train_dataset()
            if len(self.train_set) < self.batch_size:  # type: ignore[arg-type]
                raise FacesError(
                    f"batch_size {self.batch_size} is larger than the training set "
                    f"({len(self.train_set)} images): lower data.batch_size"  # type: ignore[arg-type]
                )
            if self.on_device and whole_arrays(self.train_set) is None:
                raise FacesError(
                    f"data.on_device needs the training images in one array, and {type(self).__name__} reads "
                    "image files: set data.prepared true (or data.on_device false)"
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
        run continues from there. The batches are counted here, as each reaches the device.
        """
        if self.trainer is None or self.trainer.state.fn != "fit" or self._position is None:
            return {}
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_position = dict(state) or None
        if self._resume_position:
            self._position = (self._resume_position["epoch"], self._resume_position["batches"])

    def _count_training_batch(self) -> None:
        epoch = self.trainer.current_epoch
        if self._position is None or self._position[0] != epoch:
            self._position = (epoch, 0)
        self._position = (epoch, self._position[1] + 1)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        positions = isinstance(dataset, Positions)  # on_device: no work for worker processes
        workers = 0 if positions else self.num_workers
        collate = _as_is if positions else prepared_collate if isinstance(dataset, PreparedImages) else None
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
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available() and not positions,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        if self.on_device:
            return self._loader(Positions(len(self.train_set)), train=True)  # type: ignore[arg-type]
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or len(self.val_set) == 0:  # type: ignore[arg-type]
            return []  # no validation split: Lightning then skips validation
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        values, asked = torch.zeros(len(self.attributes)), torch.zeros(len(self.attributes))
        for name, value in self.predict_attributes.items():
            values[self.attributes.index(name)], asked[self.attributes.index(name)] = value, 1.0
        return DataLoader(LatentSeeds(self.predict_samples, values, asked), batch_size=self.batch_size)

    def attribute_rows(self, count: int, seed: int) -> torch.Tensor:
        """The conditioning attributes (count, A) of ``count`` training images drawn at random
        (seeded, with replacement): real combinations, in the data's own proportions."""
        dataset = self.train_set if self.train_set is not None else self.train_dataset()
        rows = dataset_attributes(dataset)
        picked = torch.randint(len(rows), (count,), generator=torch.Generator().manual_seed(seed))
        return rows[picked][:, self.attribute_columns].float()

    def reference_images(self, count: int, seed: int) -> torch.Tensor:
        """``count`` training images (count, 3, S, S) in [-1, 1], drawn without replacement from
        ``seed``: the fixed reference batch of a D with virtual batch norm."""
        dataset = self.train_set if self.train_set is not None else self.train_dataset()
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]  # type: ignore[arg-type]
        return to_float(torch.stack([dataset[int(i)][0] for i in order]))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.predicting:
            return batch
        if isinstance(batch, torch.Tensor):  # on_device: positions in the training set
            images, attributes = self._arrays_on(batch.device)
            batch = (images.index_select(0, batch), attributes.index_select(0, batch))
        images, attributes = batch
        if attributes.ndim == 2 and attributes.shape[1] > 0:
            attributes = attributes[:, self.attribute_columns]  # (B, 40) -> (B, A), the run's own
        images = to_float(images)  # uint8 (B, 3, S, S) -> float in [-1, 1]
        if self.trainer is not None and self.trainer.training:
            self._count_training_batch()
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

    def _arrays_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set's arrays on ``device``, copied there at the first batch (on_device)."""
        if self._device_arrays is None or self._device_arrays[0].device != device:
            assert self.train_set is not None
            arrays = whole_arrays(self.train_set)
            assert arrays is not None  # setup checked
            self._device_arrays = (arrays[0].to(device), arrays[1].to(device))
        return self._device_arrays
