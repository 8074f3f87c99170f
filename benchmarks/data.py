"""Data loading: images/s of a plain JPEG pipeline against lightning_faces' prepared array.

(a) the way the reference projects load CelebA: a Dataset of JPEG paths, PIL, torchvision's
    Resize + CenterCrop + ToTensor + Normalize, a shuffling DataLoader;
(b) lightning_faces' prepared array (decoded once, memory-mapped), through the datamodule's
    train loader: with the same worker count, and with its default for prepared data (no
    workers: a batch is one copy out of the page cache).
Same batch size, one run. The prepared loader delivers uint8 batches that the training step
scales to [-1, 1] on its device; that scaling is timed on its own. Then the memory of loader
processes reading prepared arrays of two sizes (the array is shared page cache).

    python -m benchmarks.data --data-dir ../shared/celeba-sample
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.common import memory_mib, sample_data, table, worker_pids, write_json
from lightning_faces.data import to_float
from lightning_faces.data.prepared import PreparedImages


class JpegFolder(Dataset):
    """The tutorials' pipeline: open each JPEG with PIL, resize, centre-crop, normalize."""

    def __init__(self, folder: Path, image_size: int) -> None:
        self.paths = sorted(folder.glob("*.jpg"))
        self.transform = transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), 0


def images_per_second(loader: DataLoader, epochs: int) -> float:
    """Images delivered per second over whole epochs, after a first batch (worker start-up)."""
    iterator = iter(loader)
    next(iterator)
    count, started = 0, time.perf_counter()
    for epoch in range(epochs):
        for batch in iterator:
            count += batch[0].shape[0]
        if epoch + 1 < epochs:
            iterator = iter(loader)
    return count / (time.perf_counter() - started)


def scaling_ms(batch_size: int, image_size: int) -> float:
    """Milliseconds to scale one uint8 batch to [-1, 1] here (the training step does it)."""
    batch = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    to_float(batch)
    started = time.perf_counter()
    for _ in range(50):
        to_float(batch)
    return (time.perf_counter() - started) / 50 * 1000


def memory_for(array_folder: Path, rows: int, batch_size: int, workers: int) -> dict[str, float]:
    """Reads ``rows`` rows of a prepared array once through a loader; peak memory per process."""
    dataset = PreparedImages(array_folder)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:
        pass
    workers_memory = [memory_mib(pid) for pid in worker_pids()]
    main = memory_mib(os.getpid())
    del loader
    gc.collect()
    return {
        "rows": rows,
        "array MiB": rows * int(np.prod(dataset.shape[1:])) / 2**20,
        "main peak RSS MiB": main["VmHWM"],
        "worker peak RSS MiB": max(m["VmHWM"] for m in workers_memory) if workers_memory else None,
        "worker private MiB": max(m["RssAnon"] for m in workers_memory) if workers_memory else None,
        "worker shared file MiB": max(m["RssFile"] for m in workers_memory) if workers_memory else None,
    }


def tiled_copy(folder: Path, times: int, into: Path) -> Path:
    """A prepared array ``times`` as long (the sample repeated), to see memory at a larger size."""
    images = np.load(folder / "images.npy", mmap_mode="r")
    attributes = np.load(folder / "attributes.npy", mmap_mode="r")
    into.mkdir(parents=True, exist_ok=True)
    big = np.lib.format.open_memmap(into / "images.npy", "w+", np.uint8, (len(images) * times, *images.shape[1:]))
    for i in range(times):
        big[i * len(images) : (i + 1) * len(images)] = images
    big.flush()
    np.save(into / "attributes.npy", np.tile(attributes, (times, 1)))
    meta = json.loads((folder / "meta.json").read_text())
    for name in ("images", "attributes"):
        meta["shapes"][name][0] *= times
    (into / "meta.json").write_text(json.dumps(meta))
    return into


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/celeba-sample", help="folder holding celeba/")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data for each pipeline")
    parser.add_argument("--json", default="runs/benchmarks/data.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        data = sample_data(args, Path(scratch) / "prepared", num_workers=args.workers, flip=True)
        started = time.perf_counter()
        (folder,) = data.prepare(["all"])
        prepare_seconds = time.perf_counter() - started
        data.setup("fit")
        count = len(data.train_set)

        jpeg = JpegFolder(Path(args.data_dir) / "celeba" / "img_align_celeba", args.image_size)
        plain_loader = DataLoader(jpeg, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
        plain = images_per_second(plain_loader, args.epochs)
        same_workers = images_per_second(data.train_dataloader(), args.epochs)
        data.num_workers = 0  # the default for prepared data
        in_process = images_per_second(data.train_dataloader(), args.epochs)
        rows = [
            {"pipeline": "JPEG + PIL + torchvision transforms", "workers": args.workers, "images/s": plain},
            {"pipeline": "lightning_faces prepared array", "workers": args.workers, "images/s": same_workers},
            {"pipeline": "lightning_faces prepared array (default)", "workers": 0, "images/s": in_process},
        ]
        for row in rows:
            row["vs plain"] = row["images/s"] / plain
        print(f"\nData loading: {count} images at {args.image_size}px, batch {args.batch_size}")
        print(table(rows, ["pipeline", "workers", "images/s", "vs plain"]))
        scale = scaling_ms(args.batch_size, args.image_size)
        print(f"(scaling a uint8 batch to [-1, 1], done in the training step: {scale:.2f} ms per batch here;")
        print(f" preparing the array once took {prepare_seconds:.1f} s: {count / prepare_seconds:,.0f} images/s)")

        big = tiled_copy(folder, 10, Path(scratch) / "x10")
        memory = [memory_for(folder, count, args.batch_size, args.workers)]
        memory.append(memory_for(big, count * 10, args.batch_size, args.workers))
        columns = ["rows", "array MiB", "main peak RSS MiB", "worker peak RSS MiB", "worker private MiB"]
        print("\nMemory per process reading a prepared array once (private = not shared page cache):")
        print(table(memory, [*columns, "worker shared file MiB"]))

    result = {
        "benchmark": "data",
        "settings": vars(args),
        "images": count,
        "prepare_seconds": prepare_seconds,
        "throughput": rows,
        "speedup_same_workers": same_workers / plain,
        "speedup_default": in_process / plain,
        "scaling_ms_per_batch": scale,
        "memory": memory,
    }
    print(f"\nwrote {write_json(args.json, result)}")
    return result


if __name__ == "__main__":
    main()
