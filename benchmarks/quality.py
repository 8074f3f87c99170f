"""Which shipped config makes the best faces at equal compute: KID and FID on held-out images.

Each candidate is a shipped config (plus overlays) trained through the real entry point
(``python -m lightning_faces fit``) for the same wall time (or, with ``--steps``, the same number of
iterations: for switches that change speed, not the training) on the same training images, once per
seed; then its generator (the EMA one when the config keeps one) draws ``--samples`` images,
scored against real images held out from training:

- KID (``torchmetrics``' KernelInceptionDistance: unbiased, so comparable at the few hundred
  images a short run can afford), mean +- std over ``--kid-subsets`` random subsets;
- FID, same features (biased upward at small counts: compare FIDs of equal sample counts only).

The split: of the data folder's CelebA images, a seeded random ``--held-out`` are held out (the
real side of every score) and the rest are the training set. Inception runs once per image set
(real features cached in the work folder, each run's beside its checkpoint with
``scored.png``, the first 64 images scored). On a 2-core CPU, train at 32x32 with CPU-sized widths
(``--image-size 32 --width 32``, the defaults); on a GPU, 64x64 with the configs' own widths.

    python -m benchmarks.quality --data-dir ../shared/celeba-sample --minutes 8 --seeds 0 1 \\
        --weights ../shared/fid/inception-2015-12-05-torchfidelity-layout-nofc.pth
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import time
import warnings
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from benchmarks.common import REPO, repo_env, table, write_json
from lightning_faces import cli
from lightning_faces.data import ImageFolder, to_uint8
from lightning_faces.files import atomic_path
from lightning_faces.metrics import RESIZES, check_inception_weights, make_fid, real_sample, score_features
from lightning_faces.module import GAN

CONFIGS = REPO / "configs"
OVERLAYS = REPO / "benchmarks" / "overlays"


def flags_of(values: dict[str, Any], prefix: str) -> list[str]:
    return [item for key, value in values.items() for item in (f"{prefix}{key}", str(value))]


PROGRESSIVE_CPU = [
    "--model.objective", "lightning_faces.objectives.NonSaturating",
    "--model.d_regularizers", "[]",
    "--model.ema_decay", "0.995",
    "--model.generator.init_args.max_channels", "64",
    "--model.discriminator.init_args.max_channels", "64",
    "--model.generator.init_args.latent_dim", "128",
]  # fmt: skip
PROGRESSIVE_CPU_GROWTH = flags_of(
    {"start_resolution": 8, "stable_images": 32000, "fade_images": 32000, "batch_sizes": "{8: 32}"},
    prefix="--model.growth.init_args.",
) + ["--model.growth.init_args.reset_optimizers", "false"]
PROGRESSIVE_SHORT = flags_of({"stable_images": 16000, "fade_images": 16000}, prefix="--model.growth.init_args.")

R3GAN_CPU = ["--config", str(OVERLAYS / "r3gan_cpu.yaml")]

# name -> (config files, overrides): each a shipped YAML as a user would run it; the CPU sizes
# (image size, widths, batch) and the data come from the command line for all alike
CANDIDATES: dict[str, tuple[list[str], list[str]]] = {
    "dcgan": (["dcgan.yaml"], []),
    "dcgan+ema": (["dcgan.yaml", "ema.yaml"], []),
    "dcgan+ema+diffaugment": (["dcgan.yaml", "ema.yaml", "diffaugment.yaml"], []),
    # the speed switches against the training path before them (two G passes, contiguous
    # layout): run with --steps, equal iterations
    "dcgan+ema+fresh": (
        ["dcgan.yaml", "ema.yaml"],
        ["--model.fresh_latents", "true", "--model.channels_last", "false"],
    ),
    "dcgan+ema+bf16": (["dcgan.yaml", "ema.yaml"], ["--trainer.precision", "bf16-mixed"]),
    # ema.yaml before its ramp (decay 0.999 from G's untrained start)
    "dcgan+ema-ramp": (["dcgan.yaml", "ema.yaml"], ["--model.ema_ramp", "null"]),
    # no known step count to decay to under a time budget: constant learning rates
    "sngan": (["sngan.yaml"], ["--model.lr_decay", "none"]),
    "sngan+ema": (["sngan.yaml", "ema.yaml"], ["--model.lr_decay", "none"]),
    # ProGAN's networks grown 8 -> 16 -> 32 against the same networks trained at the final size
    # from the start: progressive.yaml with the progressive quickstart's CPU recipe (non-saturating
    # loss, 64 channels at most, EMA 0.995; run with --width 16), one loader batch for every phase
    "progressive": (["progressive.yaml"], [*PROGRESSIVE_CPU, *PROGRESSIVE_CPU_GROWTH]),
    "progressive-fixed": (["progressive.yaml"], [*PROGRESSIVE_CPU, "--model.growth", "null"]),
    # half the phases' images: 32x32 fully in after 80k images (about 2.5 of 6 CPU minutes)
    "progressive-short": (["progressive.yaml"], [*PROGRESSIVE_CPU, *PROGRESSIVE_CPU_GROWTH, *PROGRESSIVE_SHORT]),
    # R3GAN at CPU sizes (their widths set per resolution, so --width does not apply; see the overlays)
    "r3gan": (["r3gan.yaml"], R3GAN_CPU),
    "r3gan+bf16": (["r3gan.yaml"], [*R3GAN_CPU, "--trainer.precision", "bf16-mixed"]),  # fit's choice on a bf16 CPU
    "r3gan-wide": (["r3gan.yaml"], ["--config", str(OVERLAYS / "r3gan_cpu_wide.yaml")]),
    # ablations, each the CPU recipe without one of its parts: R3GAN's networks (DCGAN's, at
    # --width), the relativistic loss (the non-saturating one), R1 + R2 (none), the schedules
    # (each held at its end value), the EMA's ramp
    "r3gan-dcgan-nets": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_dcgan_nets.yaml")]),
    "r3gan-ns": (["r3gan.yaml"], [*R3GAN_CPU, "--model.objective", "lightning_faces.objectives.NonSaturating"]),
    "r3gan-no-penalties": (["r3gan.yaml"], [*R3GAN_CPU, "--model.d_regularizers", "[]"]),
    "r3gan-held": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_held.yaml")]),
    "r3gan-no-ramp": (["r3gan.yaml"], [*R3GAN_CPU, "--model.ema_ramp", "null"]),
    # at the longer budget (issue 24): schedules over 600,000 images with the lr decayed, and D twice as wide
    "r3gan-long": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_long.yaml")]),
    "r3gan-wide-d": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_wide_d.yaml")]),
    # which network narrows the faces (issue 24): G as wide as DCGAN's, DCGAN's G with R3GAN's D, and
    # G's stem mapping z to all of its 4x4 features
    "r3gan-wide-g": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_wide_g.yaml")]),
    "r3gan-dcgan-g": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_dcgan_g.yaml")]),
    "r3gan-linear-stem": (["r3gan.yaml"], [*R3GAN_CPU, "--config", str(OVERLAYS / "r3gan_cpu_linear_stem.yaml")]),
}


class SaveAtEnd(Callback):
    """Saves ``checkpoints/final.ckpt`` when training stops (at ``max_time``): the shipped configs
    checkpoint every N iterations, which would score a generator up to N iterations old."""

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.save_checkpoint(Path(trainer.log_dir) / "checkpoints" / "final.ckpt")


def split_images(data_dir: Path, work: Path, held_out: int) -> tuple[Path, Path]:
    """Links a seeded random ``held_out`` of the CelebA images into work/held-out, the rest into work/train."""
    source = (data_dir / "celeba" / "img_align_celeba").resolve()  # links from another folder: absolute
    names = sorted(p.name for p in source.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if held_out >= len(names):
        raise SystemExit(f"--held-out {held_out} leaves no training images ({len(names)} in {source})")
    chosen = set(real_sample(len(names), held_out, seed=0))
    train, test = work / "train", work / "held-out"
    for folder in (train, test):
        folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        link = (test if index in chosen else train) / name
        if not link.exists():
            link.symlink_to(source / name)
    return train, test


def features_of(images: Any, extractor: nn.Module, device: torch.device, what: str) -> torch.Tensor:
    """Inception features (N, 2048) of uint8 image batches."""
    out = []
    with torch.no_grad():
        for batch in tqdm(images, desc=f"Inception features of {what}", unit="batch", leave=False):
            out.append(extractor(batch.to(device)).double().cpu())
    return torch.cat(out)


def real_features(folder: Path, args: argparse.Namespace, extractor: nn.Module, device: torch.device) -> torch.Tensor:
    cache = Path(args.work) / f"real-{args.image_size}-{args.resize}-{args.held_out}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    loader = DataLoader(ImageFolder(folder, args.image_size, args.crop), batch_size=args.batch_size)
    features = features_of((images for images, _ in loader), extractor, device, "held-out images")
    with atomic_path(cache) as tmp:
        torch.save(features, tmp)
    return features


def fake_batches(checkpoint: Path, args: argparse.Namespace, device: torch.device):
    model = GAN.from_checkpoint(checkpoint, map_location=device).to(device).eval()
    seeded = torch.Generator(device=device).manual_seed(1234)  # the same latents for every run
    for start in range(0, args.samples, args.batch_size):
        count = min(args.batch_size, args.samples - start)
        yield to_uint8(model.generate(*model.genes.sample(count, seeded)))


def fake_features(
    checkpoint: Path, args: argparse.Namespace, extractor: nn.Module, device: torch.device, what: str
) -> torch.Tensor:
    """Features of ``--samples`` images of a run's generator, cached beside its checkpoint (a table
    that gains a seed or a candidate scores only the new runs)."""
    extractor_name = (args.feature_extractor or "inception").rpartition(".")[2]
    cache = checkpoint.with_name(f"features-{extractor_name}-{args.samples}-{args.resize}.pt")
    if cache.exists() and cache.stat().st_mtime >= checkpoint.stat().st_mtime:
        return torch.load(cache, weights_only=True)
    batches = fake_batches(checkpoint, args, device)
    first = next(batches)  # the scored images' first 64, as a grid to look at
    with atomic_path(checkpoint.with_name("scored.png")) as tmp:
        save_image(first[:64].float() / 255, tmp, nrow=8, padding=1, format="png")
    features = features_of(chain([first], batches), extractor, device, what)
    with atomic_path(cache) as tmp:
        torch.save(features, tmp)
    return features


def score(real: torch.Tensor, fake: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """KID (over ``--kid-subsets`` of ``--kid-subset-size``) and FID, as ``evaluate`` computes them."""
    subsets = {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size}
    scores = score_features(real, fake, ["fid", "kid"], **subsets)
    return {"kid": scores["kid"], "kid_std": scores["kid_std"], "fid": scores["fid"]}


def train(name: str, seed: int, train_dir: Path, args: argparse.Namespace) -> Path:
    """One candidate, one seed, ``--minutes`` of training; returns its run folder."""
    files, overrides = CANDIDATES[name]
    runs = Path(args.work) / "runs"
    width = str(args.width)
    fit = [
        *(item for f in files for item in ("--config", str(CONFIGS / f))),
        "--trainer.precision", "32-true",  # fp32 unless a candidate says otherwise, whatever the CPU
        *overrides,
        "--config", str(Path(args.work) / "benchmark.yaml"),
        "--data.data_dir", str(train_dir),
        "--model.generator.init_args.width", width,
        "--model.discriminator.init_args.width", width,
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.logger.init_args.name", name,
        "--seed_everything", str(seed),
        "--model.seed", str(seed),
        "--trainer.callbacks+=benchmarks.quality.SaveAtEnd",
    ]  # fmt: skip
    run = runs / name / f"version_{seed}"
    if (run / "checkpoints" / "final.ckpt").exists() and not args.retrain:
        changed = changed_settings(run, fit)
        if changed:
            raise SystemExit(
                f"{run} was trained with other settings than {name} has now ({', '.join(changed)}): "
                "pass --retrain to train it again, or move the run out of the work folder"
            )
        return run
    command = [sys.executable, "-m", "lightning_faces", "fit", *fit, "--trainer.logger.init_args.version", str(seed)]
    env = repo_env()
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{result.stderr[-3000:]}")
    print(f"  {name} seed {seed}: trained {time.perf_counter() - started:.0f} s", flush=True)
    return run


def resolved_config(fit_arguments: list[str]) -> dict[str, Any]:
    """The config ``fit`` resolves from these arguments, its sections' ``init_args`` unwrapped
    (``--print_config`` in this process: nothing is built or trained). Raises ``ValueError``
    (the parser's message on stderr) when they do not parse."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LightningCLI's: args given while sys.argv has the benchmark's
            cli.main(["fit", *fit_arguments, "--print_config"])
    except SystemExit as exit_info:  # print_config always exits; 0 once printed
        if exit_info.code:
            raise ValueError(f"fit {' '.join(fit_arguments)} does not parse") from None
    config = yaml.safe_load(printed.getvalue())
    return {key: value.get("init_args", value) if isinstance(value, dict) else value for key, value in config.items()}


def changed_settings(run: Path, fit_arguments: list[str]) -> list[str]:
    """The settings (``section.key``) in which a kept run differs from what ``fit_arguments``
    resolve to now: an edited overlay or config, or another --minutes, changes them without
    changing the command. The run's saved config is resolved again by today's code, so a setting
    added since, at its default, is no change. Compared: the model, data, trainer (but its logger,
    the run's folder) and seed; not what only the saved copy records (``weights_only``)."""
    try:
        now = resolved_config(fit_arguments)
    except ValueError as error:
        raise SystemExit(f"{error}: see the parser's message above") from None
    try:
        saved = resolved_config(["--config", str(run / "config.yaml")])
    except ValueError:
        raise SystemExit(f"{run}'s saved config does not parse with today's code: pass --retrain") from None

    def flat(config: dict[str, Any]) -> dict[str, Any]:  # what trains: the model, data, trainer and seed
        settings = {"seed_everything": config.get("seed_everything")}
        for section in ("model", "data", "trainer"):
            settings.update({f"{section}.{key}": value for key, value in config[section].items()})
        settings.pop("trainer.logger")
        return settings

    now, saved = flat(now), flat(saved)
    return sorted(key for key in now.keys() | saved.keys() if now.get(key) != saved.get(key))


def write_overlay(args: argparse.Namespace) -> None:
    """What every candidate shares: the training images, the size, the budget, no FID during training."""
    minutes = int(args.minutes)
    seconds = round((args.minutes - minutes) * 60)
    budget = f'max_time: "00:00:{minutes:02d}:{seconds:02d}"\n  max_steps: -1'
    if args.steps:
        budget = f"max_time: null\n  max_steps: {args.steps}"
    (Path(args.work) / "benchmark.yaml").write_text(
        f"""trainer:
  {budget}
  max_epochs: -1
  enable_progress_bar: false
  log_every_n_steps: 50
fid:
  every_n_epochs: 0
  every_n_steps: 0
data:
  class_path: lightning_faces.data.ImageFolderDataModule
  init_args:
    image_size: {args.image_size}
    crop: {args.crop}
    batch_size: {args.train_batch_size}
    num_workers: 0
"""
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/celeba-sample", help="folder holding celeba/")
    parser.add_argument("--candidates", nargs="+", default=["dcgan", "dcgan+ema", "sngan+ema"], choices=CANDIDATES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time per run")
    parser.add_argument("--steps", type=int, default=None, help="train each run this many iterations instead")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="G's and D's width (CPU-sized)")
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--crop", type=float, default=0.79, help="as for CelebA training")
    parser.add_argument("--held-out", type=int, default=1000, help="real images kept out of training")
    parser.add_argument("--samples", type=int, default=1000, help="generated images scored per run")
    parser.add_argument("--kid-subsets", type=int, default=50)
    parser.add_argument("--kid-subset-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100, help="images per Inception pass")
    parser.add_argument("--resize", default="tensorflow", choices=RESIZES)
    parser.add_argument("--weights", default=None, help="Inception weights file (default: torch-fidelity's)")
    parser.add_argument("--feature-extractor", default=None, help=argparse.SUPPRESS)  # tests: a tiny network
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="runs/benchmarks/quality", help="split, runs and cached features")
    parser.add_argument("--retrain", action="store_true", help="train again even where a run exists")
    parser.add_argument("--json", default="runs/benchmarks/quality.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    Path(args.work).mkdir(parents=True, exist_ok=True)

    if args.feature_extractor:
        module, _, name = args.feature_extractor.rpartition(".")
        extractor = getattr(__import__(module, fromlist=[name]), name)()
    else:
        check_inception_weights(args.weights, option="--weights")
        extractor = make_fid(args.weights, resize=args.resize).inception
    extractor = extractor.to(device).eval()

    train_dir, held_out_dir = split_images(Path(args.data_dir), Path(args.work), args.held_out)
    write_overlay(args)
    real = real_features(held_out_dir, args, extractor, device)
    rows = []
    for name in args.candidates:
        for seed in args.seeds:
            run = train(name, seed, train_dir, args)
            checkpoint = run / "checkpoints" / "final.ckpt"
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            fake = fake_features(checkpoint, args, extractor, device, f"{name} seed {seed}")
            iterations = int(saved["iteration"])
            rows.append(
                {
                    "config": name,
                    "seed": seed,
                    "iterations": iterations,
                    "images seen": int(saved.get("images_seen") or iterations * args.train_batch_size),
                    **score(real, fake, args),
                }
            )
            print(f"  {rows[-1]}", flush=True)

    summary = []
    for name in args.candidates:
        mine = [row for row in rows if row["config"] == name]
        kids = [row["kid"] for row in mine]  # Python floats: float32 loses the spread of large values
        summary.append(
            {
                "config": name,
                "iterations": " / ".join(str(row["iterations"]) for row in mine),
                "KID x 1000 (per seed, +- subset std)": ", ".join(
                    f"{1000 * row['kid']:.1f} +- {1000 * row['kid_std']:.1f}" for row in mine
                ),
                "KID x 1000 mean": 1000 * sum(kids) / len(kids),
                "seed spread": 1000 * (max(kids) - min(kids)),
                "FID (per seed)": ", ".join(f"{row['fid']:.1f}" for row in mine),
            }
        )
    budget = f"{args.steps} iterations" if args.steps else f"{args.minutes:g} min"
    protocol = (
        f"{args.image_size}px, width {args.width}, batch {args.train_batch_size}, {budget} per run on "
        f"{device}; {len(real)} held-out real vs {args.samples} generated images, crop {args.crop}, resize "
        f"{args.resize}, KID over {args.kid_subsets} subsets of {min(args.kid_subset_size, args.samples, len(real))}"
    )
    print(f"\nQuality at equal {'iterations' if args.steps else 'wall time'} ({protocol})")
    print(table(summary, list(summary[0])))
    result = {"benchmark": "quality", "protocol": protocol, "settings": vars(args), "runs": rows, "summary": summary}
    print(f"\nwrote {write_json(args.json, result)}")
    return result


if __name__ == "__main__":
    main()
