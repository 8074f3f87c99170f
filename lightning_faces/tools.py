"""Commands beside training: ``fid A B`` and ``download-weights``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lightning_faces.data import CelebA, ImageFolder, to_uint8
from lightning_faces.errors import FacesError
from lightning_faces.metrics import check_inception_weights, download_weights, make_fid


def run_tool(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_faces")
    commands = parser.add_subparsers(dest="command", required=True)
    fid = commands.add_parser(
        "fid",
        help="FID between two sources",
        description="FID between two sources, each an image folder, a CelebA-layout folder (the one that holds "
        "celeba/) or a checkpoint (sampled), preprocessed as for training.",
    )
    fid.add_argument("source_a")
    fid.add_argument("source_b")
    fid.add_argument("--image-size", type=int, default=None, help="side in pixels (default: the checkpoint's, else 64)")
    fid.add_argument("--num-samples", type=int, default=10_000, help="images sampled from a checkpoint (default 10000)")
    fid.add_argument("--max-images", type=int, default=None, help="use at most this many images of a folder")
    fid.add_argument("--split", default="all", help="CelebA split of a CelebA folder (default all)")
    fid.add_argument(
        "--crop", type=float, default=None, help="crop fraction (default 0.79 for CelebA, 1.0 for folders)"
    )
    fid.add_argument("--batch-size", type=int, default=100)
    fid.add_argument("--weights", default=None, help="Inception weights file (default: torch-fidelity's location)")
    fid.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    download = commands.add_parser("download-weights", help="fetch the FID Inception weights (needs internet)")
    download.add_argument("--output", default=None, help="where to save (default: where torchmetrics looks)")
    args = parser.parse_args(argv)

    if args.command == "download-weights":
        path = download_weights(args.output)
        print(f"Inception weights at {path}")
        if args.output:
            print(f"set fid.feature_extractor_weights_path: {path} in your config")
        return
    score = compute_fid(args)
    print(f"FID {score:.3f}")


def compute_fid(args: argparse.Namespace) -> float:
    weights = check_inception_weights(args.weights)
    device = torch.device(args.device)
    checkpoints = [s for s in (args.source_a, args.source_b) if _is_checkpoint(s)]
    image_size = args.image_size or (_checkpoint_image_size(checkpoints[0]) if checkpoints else 64)
    fid = make_fid(weights).to(device)
    for source, real in ((args.source_a, True), (args.source_b, False)):
        count = 0
        with tqdm(desc=f"Inception features of {source}", unit="img", leave=False) as progress:
            for images in _batches(source, image_size, args, device):
                fid.update(images.to(device), real=real)
                count += images.shape[0]
                progress.update(images.shape[0])
        print(f"{'A' if real else 'B'}: {count} images from {source}")
    return float(fid.compute())


def _is_checkpoint(source: str) -> bool:
    return Path(source).is_file() and Path(source).suffix in (".ckpt", ".pt", ".pth")


def _checkpoint_image_size(path: str) -> int:
    from lightning_faces.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["hyper_parameters"]["image_size"])


def _batches(source: str, image_size: int, args: argparse.Namespace, device: torch.device):
    """Yields uint8 (B, 3, S, S) batches from a folder, a CelebA folder or a checkpoint."""
    if _is_checkpoint(source):
        from lightning_faces.module import GAN

        model = GAN.load_from_checkpoint(source, map_location=device, weights_only=True)
        if model.hparams.image_size != image_size:
            raise FacesError(f"{source} generates {model.hparams.image_size}px images, not --image-size {image_size}")
        seeded = torch.Generator(device=device).manual_seed(0)
        for start in range(0, args.num_samples, args.batch_size):
            count = min(args.batch_size, args.num_samples - start)
            yield to_uint8(model.generate(model.sample_latents(count, seeded)))
        return
    path = Path(source)
    if not path.exists():
        raise FacesError(f"{source} is neither a checkpoint file nor a folder of images")
    dataset: Dataset
    if (path / "celeba" / "list_attr_celeba.txt").exists():
        dataset = CelebA(path, args.split, image_size, 0.79 if args.crop is None else args.crop)
    else:
        dataset = ImageFolder(path, image_size, 1.0 if args.crop is None else args.crop)
    if args.max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_images, len(dataset))))
    for images, _ in DataLoader(dataset, batch_size=args.batch_size, num_workers=2):
        yield images
