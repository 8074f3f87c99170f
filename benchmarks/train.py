"""Training throughput: whole iterations (D and G updates), images/s, plain PyTorch vs lightning_faces.

(a) a plain PyTorch DCGAN loop as the classic tutorials write it (fp32, a JPEG folder through
    PIL and torchvision transforms, D on real then on G(z).detach(), G through D(G(z)), two
    Adams), written for this benchmark, with lightning_faces' own G and D;
(b) ``lightning_faces``: the GAN LightningModule on the prepared array, through Lightning's
    Trainer, with the same networks, batch size and optimizers, once per ``--variants`` entry:
    a Lightning precision (``32-true``, ``bf16-mixed``) and switches after ``+``:
    ``channels_last``, ``compile`` (``torch.compile``), ``cuda_graph`` (the iteration replayed as
    one CUDA graph; eager on a CPU), ``fresh`` (G's update on fresh latents:
    two G passes per iteration), ``on_device`` (``data.on_device``: the uint8 array on the
    device, no loader); ``default`` is what ``fit`` does with none of them set (``GAN``'s
    defaults: one G pass, channels-last on CPU; bf16-mixed on a CPU with bf16 arithmetic, fp32
    elsewhere, as ``fit`` chooses when the config sets no precision).
All run in one process, in turns (plain, each variant, plain, each variant, ...). Each variant's
ratio to the plain loop is taken per round, against that round's plain run, and reported as the
median over rounds with its range: the machine is shared and noisy.

    python -m benchmarks.train --data-dir ../shared/celeba-sample            # CPU
    python -m benchmarks.train --data-dir DATA --device cuda --iterations 200 \
        --variants 32-true bf16-mixed bf16-mixed+on_device+cuda_graph bf16-mixed+channels_last+compile+on_device
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks.common import sample_data, table, write_json
from benchmarks.data import JpegFolder
from lightning_faces.checkpoint import SafeCheckpointIO
from lightning_faces.hardware import choose_precision, describe_cpu
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """The tutorial loop; returns images/s over the timed iterations."""
    torch.manual_seed(0)
    generator = DCGANGenerator(args.latent_dim, args.width, args.image_size).to(device)
    discriminator = DCGANDiscriminator(args.width, args.image_size).to(device)
    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    folder = Path(args.data_dir) / "celeba" / "img_align_celeba"
    loader = DataLoader(
        JpegFolder(folder, args.image_size),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    started = 0.0
    for step in range(args.warmup + args.iterations):
        if step == args.warmup:
            sync(device)
            started = time.perf_counter()
        real = next(batches)[0].to(device)
        ones = torch.ones(real.shape[0], device=device)
        zeros = torch.zeros(real.shape[0], device=device)
        # D: real, then fake, each with its own backward (as the PyTorch DCGAN tutorial does)
        discriminator.zero_grad()
        real_logits = discriminator(real).logits
        F.binary_cross_entropy_with_logits(real_logits, ones).backward()
        fake = generator(torch.randn(real.shape[0], args.latent_dim, device=device))
        fake_logits = discriminator(fake.detach()).logits
        F.binary_cross_entropy_with_logits(fake_logits, zeros).backward()
        d_opt.step()
        # G: through the just-updated D, on the same fake batch
        generator.zero_grad()
        logits = discriminator(fake).logits
        F.binary_cross_entropy_with_logits(logits, ones).backward()
        g_opt.step()
    sync(device)
    return args.iterations * args.batch_size / (time.perf_counter() - started)


class Stopwatch(L.Callback):
    """Times iterations warmup+1 .. the end, as the plain loop does."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            sync(trainer.strategy.root_device)
            self.started = time.perf_counter()
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        sync(trainer.strategy.root_device)
        self.seconds = time.perf_counter() - self.started


OPTIONS = ("channels_last", "compile", "cuda_graph", "fresh", "on_device")


def parse_variant(variant: str) -> tuple[str | None, set[str]]:
    """``"bf16-mixed+channels_last"`` -> ("bf16-mixed", {"channels_last"}); ``default`` -> (None, {})."""
    precision, *options = variant.split("+")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"--variants {variant}: after '+' only {', '.join(OPTIONS)} are known")
    if precision == "default":
        if options:
            raise ValueError(f"--variants {variant}: 'default' takes no switches")
        return None, set()
    return precision, set(options)


def lightning_run(args: argparse.Namespace, device: torch.device, prepared_dir: str, variant: str) -> float:
    precision, options = parse_variant(variant)
    switches = {} if precision is None else {"channels_last": "channels_last" in options}
    torch.manual_seed(0)
    model = GAN(
        DCGANGenerator(args.latent_dim, args.width, args.image_size),
        DCGANDiscriminator(args.width, args.image_size),
        fresh_latents="fresh" in options,
        compile="compile" in options,
        cuda_graph="cuda_graph" in options,
        **switches,
    )
    data = sample_data(args, prepared_dir, **({"on_device": True} if "on_device" in options else {}))
    stopwatch = Stopwatch(args.warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision or default_precision(device),
        max_steps=args.warmup + args.iterations,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stopwatch],
        plugins=[SafeCheckpointIO()],
    )
    trainer.fit(model, data)
    return args.iterations * args.batch_size / stopwatch.seconds


def default_precision(device: torch.device) -> str:
    """The precision ``fit`` trains in on ``device`` when the config sets none."""
    return choose_precision(device.type)[0] or "32-true"


def describe(device: torch.device) -> str:
    """The device a figure is from: a GPU's name, or the CPU's model and its bf16 arithmetic."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/celeba-sample", help="folder holding celeba/")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128, help="DCGAN's")
    parser.add_argument("--width", type=int, default=64, help="DCGAN's G and D width")
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the plain loop")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before timing starts")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[
            "32-true+fresh",
            "32-true",
            "32-true+channels_last",
            "32-true+channels_last+compile",
            "bf16-mixed",
            "bf16-mixed+channels_last",
            "default",
        ],
        help=f"lightning_faces runs: a precision (32-true, bf16-mixed) or default, +{', +'.join(OPTIONS)}",
    )
    parser.add_argument("--json", default="runs/benchmarks/train.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for variant in args.variants:
        try:
            parse_variant(variant)
        except ValueError as error:
            parser.error(str(error))

    plain, lightning = [], {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory() as prepared_dir:
        sample_data(args, prepared_dir).prepare(["all"])  # once, before any timing
        for round_ in range(args.rounds):
            plain.append(plain_loop(args, device))
            print(f"round {round_ + 1}/{args.rounds}: plain {plain[-1]:.1f} images/s", flush=True)
            for variant in args.variants:
                lightning[variant].append(lightning_run(args, device, prepared_dir, variant))
                print(f"  {variant}: {lightning[variant][-1]:.1f} images/s", flush=True)
    rows = [summarize("plain PyTorch, fp32, JPEG loader", plain, plain)]
    for variant, rounds in lightning.items():
        name = variant.replace("+", ", ")
        if variant == "default":
            layout = "channels_last, " if device.type == "cpu" else ""
            name = f"default on {device.type} ({layout}{default_precision(device)})"
        rows.append(summarize(f"lightning_faces, {name}", rounds, plain))
    where = describe(device)
    print(
        f"\nTraining on {where}: DCGAN {args.image_size}px, width {args.width}, batch {args.batch_size}, "
        f"{args.iterations} timed iterations x {args.rounds} rounds (medians; ratios per round against that "
        "round's plain loop)"
    )
    print(table(rows, ["loop", "images/s", "vs plain", "range vs plain", "all rounds"]))
    ratio = rows[1]["vs plain"]
    result = {"benchmark": "train", "device": where, "settings": vars(args), "results": rows, "ratio": ratio}
    print(f"\nwrote {write_json(args.json, result)}")
    return result


def summarize(name: str, rounds: list[float], plain: list[float]) -> dict:
    """A table row: median images/s, and the median and range of the per-round ratios to plain."""
    ratios = [value / base for value, base in zip(rounds, plain, strict=True)]
    return {
        "loop": name,
        "images/s": statistics.median(rounds),
        "vs plain": statistics.median(ratios),
        "range vs plain": f"{min(ratios):.2f}-{max(ratios):.2f}",
        "rounds": rounds,
        "all rounds": ", ".join(f"{value:.1f}" for value in rounds),
    }


if __name__ == "__main__":
    main()
