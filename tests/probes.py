"""Callbacks that tests add to real runs (by class path) to look inside them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch


class DumpState(L.Callback):
    """At the end of fit, every rank saves what it holds: module state, optimizer steps, iteration."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "state_dict": {name: value.detach().cpu().clone() for name, value in module.state_dict().items()},
            "optimizer_steps": [
                [int(s["step"]) for s in optimizer.state_dict()["state"].values()] for optimizer in trainer.optimizers
            ],
            "iteration": module.iteration,
            "images_seen": module.images_seen,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


class PauseAt(L.Callback):
    """Holds the first run of a SLURM job at an iteration until a signal arrives (or 120 s pass).

    Writes ``marker`` when it starts waiting, so a test knows when to send SLURM's warning
    signal: the job is then certainly mid-run. A requeued run (SLURM_RESTART_COUNT > 0) does not
    pause.
    """

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        if trainer.global_step != self.step or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            return
        from lightning_faces.slurm import Requeue

        requeue = next(c for c in trainer.callbacks if isinstance(c, Requeue))
        if trainer.is_global_zero:
            self.marker.write_text(str(self.step))
        for _ in range(1200):
            if requeue.signalled:
                return
            time.sleep(0.1)


class SignalDuringSetup(__import__("lightning_faces.data", fromlist=["CelebADataModule"]).CelebADataModule):
    """CelebA data whose setup sends this process SIGTERM, as a scheduler may while a run starts."""

    def setup(self, stage: str) -> None:
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler acts at once: this never ends
        super().setup(stage)


class HoldAt(L.Callback):
    """Holds every rank at iteration ``step`` until the file ``release`` exists (at most 120 s);
    global rank 0 writes ``marker`` when it starts waiting, so a test knows the run is mid-way."""

    def __init__(self, step: int, marker: str, release: str) -> None:
        self.step, self.marker, self.release = step, Path(marker), Path(release)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        if trainer.global_step != self.step:
            return
        if trainer.is_global_zero:
            self.marker.write_text(str(self.step))
        for _ in range(1200):
            if self.release.exists():
                return
            time.sleep(0.1)


class RecordPrecision(L.Callback):
    """Writes the precision the run trains in (``trainer.precision``) to ``path`` at fit start."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.path.write_text(str(trainer.precision))


class TextureFeatures(torch.nn.Module):
    """A feature network for metric tests, no weights: colour at 8x8 and fine detail (each pixel
    less its 3x3 neighbourhood's mean, weighted 20x) pooled to 8x8, 384-d in all. Blurring removes
    the detail, a colour change moves the colour: what a test needs Inception to notice, in
    milliseconds."""

    name = "texture features (tests)"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float() / 255, size=32, mode="bilinear", align_corners=False)
        detail = (x - torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)).abs()
        pool = torch.nn.functional.adaptive_avg_pool2d
        return torch.cat([pool(x, 8).flatten(1), 20 * pool(detail, 8).flatten(1)], dim=1)
