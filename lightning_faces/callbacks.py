"""Callbacks that watch training: sample grids and their GIF, learning curves, generated files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from lightning_faces.data import to_uint8
from lightning_faces.data.attributes import switch_on
from lightning_faces.evaluation import Periodic
from lightning_faces.files import atomic_path


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Writes a uint8 (3, H, W) tensor as a PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's version folder, else the trainer's root folder.

    A collective call under DDP (``trainer.log_dir`` broadcasts rank 0's answer): call it on
    every rank, in ``setup``, never from code only rank 0 runs, where it would wait forever.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


class _InRunFolder(L.Callback):
    """Resolves the run folder once, on every rank, when the trainer sets up."""

    folder: Path | None = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, module, stage)
        self.folder = run_folder(trainer)


class SampleGrid(_InRunFolder, Periodic):
    """Renders the module's fixed latent batch as a grid PNG in ``<run folder>/samples/``.

    One grid before training (step 0), one every ``every_n_epochs`` epochs, one at the end;
    each is named by its step, so the files sort in training order.

    Args:
        every_n_epochs: epochs between grids (0: none at epoch ends).
        every_n_steps: also save a grid every this many iterations (0: only per epoch).
        min_cell_size: samples smaller than this many pixels are enlarged by a whole factor
            (nearest neighbour: every generated pixel stays visible, none is invented).
    """

    at_train_start = at_train_end = True

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, min_cell_size: int = 64) -> None:
        Periodic.__init__(self, every_n_epochs, every_n_steps)
        self.min_cell_size = min_cell_size

    def path(self, trainer: L.Trainer) -> Path:
        assert self.folder is not None, "setup() runs first"
        return self.folder / "samples" / f"step_{trainer.global_step:07d}.png"

    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Renders and saves this iteration's grid. Every rank renders (a few dozen samples; the
        EMA's statistics are then refreshed at the same iteration on every rank), rank 0 writes."""
        images = to_uint8(module.generate(*module.genes.fixed()))  # (N, 3, S, S)
        if not trainer.is_global_zero:
            return
        path = self.path(trainer)
        factor = -(-self.min_cell_size // images.shape[-1])  # ceil
        if factor > 1:
            images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        grid = make_grid(images, nrow=int(len(images) ** 0.5), padding=2, pad_value=255)
        save_png(grid, path)
        log_image(trainer, "samples", grid)
        if getattr(module, "attribute_names", ()):
            control = attribute_grid(module, self.min_cell_size)
            save_png(control, path.with_name(f"attributes_{path.name}"))
            log_image(trainer, "attributes", control)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_end(trainer, module)  # the last grid
        if trainer.is_global_zero:
            samples = self.path(trainer).parent
            write_gif(sorted(samples.glob("step_*.png")), samples.parent / "samples.gif")


def attribute_grid(module: L.LightningModule, min_cell_size: int = 64, rows: int = 8) -> torch.Tensor:
    """Shows what each attribute does: uint8 (3, H, W).

    One row per fixed latent (with its fixed attributes, a real combination), in the first
    column as it is, then one column per attribute switched on (and those exclusive with it off,
    see ``data.attributes.switch_on``); the attribute's name heads its column.
    """
    names = list(module.attribute_names)
    latents, base = (genes[:rows] for genes in module.genes.fixed())  # (R, Z), (R, A)
    columns = [base] + [switch_on(base, names, name) for name in names]
    attributes = torch.stack(columns, dim=1).flatten(0, 1)  # (R * (A + 1), A), row by row
    images = to_uint8(module.generate(latents.repeat_interleave(len(columns), dim=0), attributes))
    factor = -(-min_cell_size // images.shape[-1])
    if factor > 1:
        images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    grid = make_grid(images, nrow=len(columns), padding=2, pad_value=255)  # (3, H, W)
    cell = images.shape[-1] + 2
    header = Image.new("RGB", (grid.shape[2], 40), "white")
    draw = ImageDraw.Draw(header)
    font = ImageFont.load_default()  # bundled with Pillow: nothing is fetched
    for column, title in enumerate(["as drawn", *names]):
        for line, text in enumerate(title.split("_")[:3]):
            draw.text((column * cell + 3, 2 + 12 * line), text[: cell // 6], fill="black", font=font)
    top = torch.from_numpy(np.array(header)).permute(2, 0, 1)  # a writable copy
    return torch.cat([top, grid.cpu()], dim=1)


def log_image(trainer: L.Trainer, key: str, image: torch.Tensor) -> None:
    """Sends a uint8 (3, H, W) image to every logger that takes images (W&B, TensorBoard)."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).cpu().numpy()], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, trainer.global_step)


def write_gif(frames: list[Path], path: Path, frame_ms: int = 250, hold_last_ms: int = 2000) -> None:
    """Animates the sample grids over training: one frame per grid, the last one held."""
    if not frames:
        return
    images = [Image.open(frame).convert("RGB") for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)


class LearningCurves(_InRunFolder):
    """Keeps the logged training metrics against the iteration and plots them into ``curves.png``.

    Metrics are read at each logging interval. Callbacks that evaluate at their own times (FID)
    offer their points through a ``curve_points()`` method; they are drawn in panels of their
    own. The history is saved in checkpoints, so a resumed run plots its whole history.

    Args:
        keys: logged metrics to record, each drawn in its own panel.
    """

    def __init__(
        self, keys: tuple[str, ...] = ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake")
    ) -> None:
        self.keys = tuple(keys)
        self.history: dict[str, list[tuple[int, float]]] = {key: [] for key in self.keys}

    def _record(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics  # rebuilt on every access: read it once per interval
        for key in self.keys:
            value, points = metrics.get(key), self.history[key]
            if value is not None and (not points or points[-1][0] != trainer.global_step):
                points.append((trainer.global_step, float(value)))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer)
        if trainer.is_global_zero:
            series = dict(self.history)
            for callback in trainer.callbacks:
                if hasattr(callback, "curve_points"):
                    series.update(callback.curve_points())
            plot_curves(series, self.folder / "curves.png")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.update(state_dict["history"])


def plot_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per metric with points, against the iteration, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    series = {key: points for key, points in history.items() if points}
    if not series:
        return
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True, squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], series.items(), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class ImageWriter(_InRunFolder, BasePredictionWriter):
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
        assert self.folder is not None, "setup() runs first"
        folder = Path(self.output_dir) if self.output_dir else self.folder / "generated"
        for index, image in zip(prediction["indices"].tolist(), prediction["images"], strict=True):
            save_png(image, folder / f"{index:06d}.png")


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the GAN's ``progress`` numbers (D's loss, D(x), D(G(z))).

    The module refreshes them as host floats at logging intervals, so drawing the bar never
    waits for the device (metrics logged with ``prog_bar=True`` are read at every refresh).
    The CLI uses it unless the config names another progress bar.
    """

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        shown = super().get_metrics(trainer, module)
        for name, value in getattr(module, "progress", {}).items():
            shown[name] = f"{value:.3g}"
        return shown
