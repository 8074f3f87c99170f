"""Keeps the console for lines a user can act on: silences, narrowly, what does not apply here.

Each filter names one message and says why it does not apply; anything else Lightning, torch or
the other libraries print still comes through.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path


def say(message: str) -> None:
    """Prints ``message`` on stderr, on the first process only (under DDP or SLURM every process
    runs the same code, and a notice printed by each would repeat)."""
    if all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        print(message, file=sys.stderr)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_known_noise() -> None:
    """Installs the filters (idempotent)."""
    # ModelCheckpoint warns (14 lines, every fit) that under manual optimization a checkpoint
    # holds the weights after the optimizer step, and suggests stashing pre-step copies. The GAN
    # saves between iterations, after D's and G's steps and the EMA, with global_step counting
    # that finished iteration: the post-step state is exactly what a resume must continue from
    # (tests/test_cli.py and test_slurm.py resume from such checkpoints to identical weights).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
    # Lightning's own Trainer code uses torch's deprecated LeafSpec (lightning/pytorch/utilities/
    # _pytree.py); nothing in a user's code or config can change it.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # A datamodule without validation images returns no validation loader on purpose, and says
    # so itself ("... has no images, so validation is skipped"); Lightning adds a vaguer echo.
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
    # A resume mid-epoch continues exactly: the datamodule's state in the checkpoint tells the
    # EpochSampler which of the epoch's batches to leave out (tests/test_requeue.py). Lightning
    # only knows loaders that are themselves stateful and warns that this one is not resumable.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    # An advertisement for a hosted logger printed on every run.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("litlogger"))


def program_name() -> str:
    """How the user started us: ``python -m lightning_faces`` or the ``lightning-faces`` script."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m lightning_faces" if script in ("", "__main__.py", "-c") else script
