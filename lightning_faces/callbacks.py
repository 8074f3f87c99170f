"""Callbacks that watch training: grids of samples from the fixed latents, generated files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torchvision.utils import make_grid

from lightning_faces.files import atomic_path
from lightning_faces.module import to_uint8


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Writes a uint8 (3, H, W) tensor as a PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's version folder, else the trainer's root folder."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class SampleGrid(L.Callback):
    """Renders the module's fixed latent batch as a grid PNG in ``<run folder>/samples/``.

    One grid before training (step 0), one every ``every_n_epochs`` epochs, one at the end;
    each is named by its step, so the files sort in training order.

    Args:
        every_n_epochs: epochs between grids.
        every_n_steps: also save a grid every this many iterations (0: only per epoch).
        min_cell_size: samples smaller than this many pixels are enlarged by a whole factor
            (nearest neighbour: every generated pixel stays visible, none is invented).
    """

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, min_cell_size: int = 64) -> None:
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.min_cell_size = min_cell_size

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> Path | None:
        if not trainer.is_global_zero:
            return None
        images = to_uint8(module.generate(module.fixed_latents))  # (N, 3, S, S)
        factor = -(-self.min_cell_size // images.shape[-1])  # ceil
        if factor > 1:
            images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        grid = make_grid(images, nrow=int(len(images) ** 0.5), padding=2, pad_value=255)
        path = run_folder(trainer) / "samples" / f"step_{trainer.global_step:07d}.png"
        save_png(grid, path)
        return path

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self.save(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        path = run_folder(trainer) / "samples" / f"step_{trainer.global_step:07d}.png"
        if not path.exists():
            self.save(trainer, module)


class ImageWriter(BasePredictionWriter):
    """Writes each image ``predict`` generates as ``<output_dir>/<index>.png``.

    Args:
        output_dir: where to write; ``None`` is ``<run folder>/generated``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def write_on_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, prediction: dict[str, torch.Tensor], *args: Any
    ) -> None:
        folder = Path(self.output_dir) if self.output_dir else run_folder(trainer) / "generated"
        for index, image in zip(prediction["indices"].tolist(), prediction["images"], strict=True):
            save_png(image, folder / f"{index:06d}.png")
