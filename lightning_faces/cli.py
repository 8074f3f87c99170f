"""``python -m lightning_faces {fit,validate,test,predict} --config configs/....yaml``"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from lightning_faces.checkpoint import SafeCheckpointIO
from lightning_faces.data import FaceDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN


class FacesCLI(LightningCLI):
    """LightningCLI for the GAN: the data's image size is the model's, checkpoints are safe."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one source of truth: G draws, and D judges, images of the size the data delivers
        parser.link_arguments("data.init_args.image_size", "model.image_size")

    def instantiate_trainer(self, **kwargs):  # type: ignore[no-untyped-def]
        plugins = self._get(self.config_init, "trainer.plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None) -> None:
    """Runs the CLI; a FacesError becomes one line on stderr and exit status 2."""
    try:
        FacesCLI(
            GAN,
            FaceDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the GAN configures its two optimizers itself
            args=args,
        )
    except FacesError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def _one_line(error: Exception) -> str:
    # errors raised in a DataLoader worker come back with the worker's traceback appended
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)
