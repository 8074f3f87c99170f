"""Seconds per FID evaluation: Inception's settings against the ones FID used before, and their error.

FID's cost is Inception v3 on every sample (upsampled to 299x299). Each variant extracts the
2048-d features of the same images, in turns over ``--rounds`` rounds (the machine is noisy;
medians shown):

- ``before``: torchmetrics' FID as lightning_faces built it before (fp32, contiguous, batch 100);
- ``batch N``: another batch size; ``channels_last``: Inception's weights (and so its
  convolutions) in channels-last layout; ``bf16``: features under bf16 autocast;
- ``default``: what ``metrics.make_fid`` builds now (channels-last, 25 images a pass on a CPU).

Seconds per 10,000 are extrapolated from ``--images`` (the rate is flat past the first batch).
The error of each variant is measured against ``before`` on those features: the largest
feature difference, and FID between real CelebA faces (first half) and the same kind of faces
blurred (second half, at 1/4 resolution and back: FID about 230, a weak generator) with
each variant's features, against the FID with ``before``'s.

    python -m benchmarks.fid --data-dir ../shared/celeba-sample \\
        --weights ../shared/fid/inception-2015-12-05-torchfidelity-layout-nofc.pth
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks.common import table, write_json
from lightning_faces.data import CelebA
from lightning_faces.metrics import check_inception_weights, make_fid


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blurred(images: torch.Tensor) -> torch.Tensor:
    """uint8 faces at a quarter of their resolution and back: a stand-in for a weak generator."""
    size = images.shape[-1]
    small = F.interpolate(images.float(), size=size // 4, mode="area")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255).byte()


def variant_metric(name: str, weights: str | None, device: torch.device) -> tuple[torch.nn.Module, int, bool]:
    """(FID metric, batch size, bf16 autocast) for a variant."""
    if name == "before":
        return make_fid(weights, fast=False).to(device), 100, False
    if name == "default":
        return make_fid(weights).to(device), 100, False
    metric = make_fid(weights, fast=False).to(device)
    batch, bf16 = 100, False
    for part in name.split("+"):
        if part.startswith("batch"):
            batch = int(part.removeprefix("batch"))
        elif part == "channels_last":
            metric.inception.to(memory_format=torch.channels_last)
        elif part == "bf16":
            bf16 = True
        else:
            raise SystemExit(f"unknown variant part {part!r} in {name!r}")
    return metric, batch, bf16


def features(
    metric: torch.nn.Module, images: torch.Tensor, batch: int, bf16: bool, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Inception features of uint8 images (N, 2048) and the seconds they took."""
    out = []
    sync(device)
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch):
            out.append(metric.inception(images[start : start + batch].to(device)).float())
    sync(device)
    return torch.cat(out).double().cpu(), time.perf_counter() - started


def fid_of(features_real: torch.Tensor, features_fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import _compute_fid

    def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(0), torch.cov(x.T)

    (mu1, sigma1), (mu2, sigma2) = moments(features_real), moments(features_fake)
    return float(_compute_fid(mu1, sigma1, mu2, sigma2))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/celeba-sample", help="folder holding celeba/")
    parser.add_argument("--weights", default=None, help="Inception weights file (default: torch-fidelity's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=64, help="the generated images' size")
    parser.add_argument(
        "--images", type=int, default=400, help="images per variant and round (half real, half blurred)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["before", "batch25", "batch200", "channels_last", "channels_last+bf16", "default"],
    )
    parser.add_argument("--json", default="runs/benchmarks/fid.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    weights = check_inception_weights(args.weights, option="--weights")

    dataset = CelebA(Path(args.data_dir), "all", args.image_size, crop=0.79)
    loader = DataLoader(dataset, batch_size=args.images, shuffle=False)
    images = next(iter(loader))[0][: args.images]
    half = len(images) // 2
    images = torch.cat([images[:half], blurred(images[half:])])

    seconds: dict[str, list[float]] = {name: [] for name in args.variants}
    feats: dict[str, torch.Tensor] = {}
    metrics = {name: variant_metric(name, weights, device) for name in args.variants}
    for metric, batch, bf16 in metrics.values():  # warm-up: first-call allocations, oneDNN kernels
        features(metric, images[: min(batch, 8)], batch, bf16, device)
    for round_ in range(args.rounds):
        for name, (metric, batch, bf16) in metrics.items():
            feats[name], took = features(metric, images, batch, bf16, device)
            seconds[name].append(took)
            print(f"round {round_ + 1}: {name} {took:.1f} s for {len(images)} images", flush=True)

    base = feats[args.variants[0]]
    base_fid = fid_of(base[:half], base[half:])
    base_seconds = statistics.median(seconds[args.variants[0]])
    rows = []
    for name in args.variants:
        median = statistics.median(seconds[name])
        difference = (feats[name] - base).abs().max().item()
        fid = fid_of(feats[name][:half], feats[name][half:])
        rows.append(
            {
                "variant": name,
                "images/s": len(images) / median,
                "s per 10,000": 10_000 * median / len(images),
                "speed-up": base_seconds / median,
                "max feature diff": f"{difference:.2e}",
                "FID": f"{fid:.4f}",
                "FID diff": f"{fid - base_fid:+.2e}",
            }
        )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else args.device
    print(
        f"\nInception features on {where} ({torch.get_num_threads()} threads), {len(images)} images of "
        f"{args.image_size}px per variant, median of {args.rounds} rounds; FID of {half} CelebA faces against "
        f"{len(images) - half} blurred ones, differences against '{args.variants[0]}'"
    )
    print(table(rows, list(rows[0])))
    result = {"benchmark": "fid", "device": where, "settings": vars(args), "results": rows}
    print(f"\nwrote {write_json(args.json, result)}")
    return result


if __name__ == "__main__":
    main()
