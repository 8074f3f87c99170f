"""Prepared datasets: every image decoded, cropped and resized once, into one uint8 array file.

A prepared split is a folder ``<prepared_dir>/<key hash>/`` holding

- ``images.npy``: uint8 (N, 3, S, S), memory-mapped by every loader worker and DDP rank, so
  they share the page cache instead of each holding a copy;
- ``attributes.npy``: float32 (N, A);
- ``meta.json``: what the images were made from (source folder, split, size, crop, file
  listing), the shapes, and a CRC32 of each array file, written last.

The key hash covers the preprocessing settings, so a change of settings makes a new folder and
never reuses a stale one. A folder is built under a temporary name and renamed into place when
complete, so an interrupted build leaves nothing a later run would trust; a folder whose files
do not match their ``meta.json`` (truncated, damaged) is moved aside and rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from lightning_faces.errors import FacesError
from lightning_faces.files import owner_tag, remove_stale_temporaries

FORMAT = 2  # bump when a prepared folder's layout or pixels change (2: every image mode scaled to 8 bits)


def default_prepared_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_faces" / "prepared"


def _identity(key: dict[str, Any]) -> dict[str, Any]:
    """What a prepared folder is made from, as stored in its meta.json (plain JSON values)."""
    return json.loads(json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str))


def prepared_folder(root: str | Path | None, key: dict[str, Any]) -> Path:
    """Where the split that ``key`` describes is (or will be) prepared."""
    text = json.dumps(_identity(key), sort_keys=True)
    base = Path(root).expanduser() if root else default_prepared_dir()
    return base / hashlib.sha256(text.encode()).hexdigest()[:16]


def _crc32(path: Path, chunk: int = 1 << 26) -> int:
    value = 0
    with path.open("rb") as file:
        while block := file.read(chunk):
            value = zlib.crc32(block, value)
    return value


def check(folder: Path, key: dict[str, Any], full: bool = True) -> str | None:
    """Why ``folder`` is not a sound prepared split for ``key`` (None: it is).

    The quick checks (meta.json, key, array headers and sizes) catch a truncated or half-written
    folder; ``full`` also compares each file's CRC32 with the one recorded when it was built.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as error:
        return f"meta.json unreadable ({error})"
    if meta.get("key") != _identity(key):
        return "made from other data or settings"
    for name in ("images", "attributes"):
        path = folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            return f"{path.name} unreadable ({error})"
        if list(array.shape) != meta["shapes"][name]:
            return f"{path.name} has shape {list(array.shape)}, meta.json says {meta['shapes'][name]}"
        if full and _crc32(path) != meta["crc32"][name]:
            return f"{path.name} does not match its checksum (damaged)"
    return None


def build(source: Dataset, folder: Path, key: dict[str, Any], num_workers: int, description: str) -> Path:
    """Decodes every image of ``source`` once into ``folder`` (atomically); returns folder."""
    count = len(source)  # type: ignore[arg-type]
    if count == 0:
        raise FacesError(f"nothing to prepare: {description} has no images")
    first_image, first_attributes = source[0]
    tmp = folder.with_name(f"{folder.name}.tmp-{owner_tag()}-{time.monotonic_ns()}")
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (count, *first_image.shape))
        attributes = np.lib.format.open_memmap(
            tmp / "attributes.npy", "w+", np.float32, (count, *first_attributes.shape)
        )
        loader = DataLoader(source, batch_size=64, num_workers=num_workers)
        start = 0
        with tqdm(total=count, desc=f"preparing {description}", unit="img") as bar:
            for batch_images, batch_attributes in loader:
                end = start + len(batch_images)
                images[start:end] = batch_images.numpy()
                attributes[start:end] = batch_attributes.numpy()
                start = end
                bar.update(len(batch_images))
        images.flush()
        attributes.flush()
        del images, attributes
        meta = {
            "key": _identity(key),
            "shapes": {
                "images": [count, *first_image.shape],
                "attributes": [count, *first_attributes.shape],
            },
            "crc32": {name: _crc32(tmp / f"{name}.npy") for name in ("images", "attributes")},
            "description": description,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        for path in tmp.iterdir():  # on disk before the rename makes the folder visible
            with path.open("rb") as file:
                os.fsync(file.fileno())
        try:
            tmp.rename(folder)
        except OSError:  # another process (another node) finished first: use its folder
            if check(folder, key, full=False) is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def ensure(
    source_factory: Any, root: str | Path | None, key: dict[str, Any], num_workers: int, description: str
) -> Path:
    """The prepared folder for ``key``: checked in full if it exists, rebuilt if unsound, else built.

    ``source_factory()`` makes the dataset to decode; it is only called when a build is needed.
    One process builds (or repairs) a folder at a time, holding a lock file beside it; others
    wait, then find the folder sound and use it. That holds across processes, DDP ranks and
    nodes that share the disk (where the file system supports flock, as local disks and NFSv4 do).
    """
    folder = prepared_folder(root, key)
    if folder.exists() and check(folder, key) is None:
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_name(f"{folder.name}.lock"), "a")  # noqa: SIM115 (held below)
    except OSError as error:
        raise FacesError(
            f"cannot write prepared data under {folder.parent} ({error}): set data.prepared_dir to a writable folder"
        ) from error
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that prepares {description} in {folder} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_temporaries(folder.parent)  # what killed builders left behind
        if folder.exists():
            problem = check(folder, key)
            if problem is None:
                return folder  # built or repaired by the process we waited for
            aside = folder.with_name(f"{folder.name}.broken-{int(time.time())}-{owner_tag()}")
            folder.rename(aside)
            print(f"prepared data {folder} is unusable ({problem}): moved to {aside.name}, rebuilding")
        return build(source_factory(), folder, key, num_workers, description)


class PreparedImages(Dataset):
    """A prepared split, memory-mapped: ``(uint8 image (3, S, S), attributes (A,))`` per index.

    The files are opened lazily in each process (a DataLoader worker maps them itself rather
    than receiving a pickled copy). ``__getitems__`` fetches a whole batch in one gather.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.shape = meta["shapes"]["images"]
        self._images: np.ndarray | None = None
        self._attributes: np.ndarray | None = None

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The images (N, 3, S, S) uint8 and attributes (N, A), memory-mapped (read-only)."""
        return self._open()

    @property
    def attributes(self) -> torch.Tensor:
        """Every row's attributes, (N, A), without reading an image."""
        return torch.from_numpy(np.array(self._open()[1]))

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None or self._attributes is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
            self._attributes = np.load(self.folder / "attributes.npy", mmap_mode="r")
        return self._images, self._attributes

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None, "_attributes": None}  # each process maps its own

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, attributes = self._open()
        return torch.from_numpy(np.array(images[index])), torch.from_numpy(np.array(attributes[index]))

    def __getitems__(self, indices: list[int]) -> Batch:
        images, attributes = self._open()
        order = np.asarray(indices)
        # one gather from the mapping, already a batch: ``collate`` passes it through
        return Batch(torch.from_numpy(images[order]), torch.from_numpy(attributes[order]))


class Batch(Sequence):
    """A batch gathered at once by ``PreparedImages``: images (B, 3, S, S) uint8, attributes (B, A).

    It is also a sequence of ``(image, attributes)`` samples, so any DataLoader's default
    collate handles it; ``collate`` (the datamodules' collate) hands the tensors on as they are.
    """

    def __init__(self, images: torch.Tensor, attributes: torch.Tensor) -> None:
        self.images, self.attributes = images, attributes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.attributes[index]


def collate(samples: Any) -> Any:
    """The DataLoader's collate for prepared data: a gathered ``Batch`` as it is, else the default."""
    if isinstance(samples, Batch):
        return [samples.images, samples.attributes]
    return default_collate(samples)
