"""Stopping on a signal without losing work: finish the iteration, save, stop, say so.

A signal handler runs wherever the main thread happens to be: between D's and G's update, or
inside a collective on one rank and not another. So the handlers here only set a flag; the
callback acts at the end of an iteration, on all ranks together, saves a checkpoint, and lets
fit wind down (end-of-fit grids, curves, loggers flushed).

``GracefulStop`` does this for SIGTERM (Kubernetes, batch systems and ``timeout`` send it) and
Ctrl-C, and the CLI then exits 143 or 130, as a shell reports a process killed by them, so a
scheduler never mistakes an interrupted run for a finished one. ``slurm.Requeue`` does it for
SLURM's warning signal and requeues the job.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class StoppedAtOnce(BaseException):
    """A signal that stops the run where it is, without a checkpoint: one that came before
    training started (nothing to save yet), or a second Ctrl-C. Not an ``Exception``, so nothing
    on its way up mistakes it for an error to handle; the CLI says so and exits 128 + signal."""

    def __init__(self, signum: signal.Signals, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)


_installed: list[StopOnSignal] = []  # handlers in place in this process, newest last


def restore_signal_handlers() -> None:
    """Puts back the handlers that every StopOnSignal in this process replaced (the CLI calls it
    when a run ends: after a failure, Lightning's teardown re-installs the handler it found)."""
    while _installed:
        _installed.pop()._restore()


class StopOnSignal(L.Callback):
    """Saves ``checkpoint_path(trainer)`` and stops training at the end of the iteration a signal
    arrived in.

    Args:
        signal_names: the signals to act on.
        check_every_n_steps: under DDP, how often the ranks agree on whether a signal came (one
            small all-reduce; a signal may reach one rank only); alone, every iteration, for free.
    """

    def __init__(self, signal_names: tuple[str, ...], check_every_n_steps: int = 10) -> None:
        self.signums = [signal.Signals[name] for name in signal_names]
        self.check_every_n_steps = check_every_n_steps
        self.received: signal.Signals | None = None  # set by the handler on this rank
        self.stopped = False  # saved and stopped (on every rank)
        self.saved_to: Path | None = None
        self.saved_step: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        raise NotImplementedError

    def save(self, trainer: L.Trainer) -> Path:
        """Saves the finished iteration (every rank calls it; rank 0 writes, atomically)."""
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def _install(self) -> None:
        for signum in self.signums:
            if signal.getsignal(signum) != self._on_signal:
                previous = signal.signal(signum, self._on_signal)
                self._previous.setdefault(signum, previous)
        if self not in _installed:
            _installed.append(self)

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._install()  # again: Lightning puts its own SIGTERM handler in place just before training

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)

    def _signalled(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:
            if trainer.global_step % self.check_every_n_steps:
                return False
            return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        return self.received is not None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # the CLI adds this callback last, so FID, grids and checkpoints of this iteration are done
        if self.stopped or not self._signalled(trainer):
            return
        path = self.save(trainer)
        name = self.received.name if self.received is not None else "a signal on another rank"
        rank_zero_info(f"{name}: finished iteration {trainer.global_step}, saved {path}")
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                # this iteration is saved: the epoch cut short must not save again at its end (an
                # epoch-end checkpoint would resume at the next epoch, skipping the rest of this one)
                callback._last_global_step_saved = trainer.global_step
        self.saved_to, self.saved_step = path, trainer.global_step
        self.stopped = True
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        if self in _installed:
            _installed.remove(self)


class GracefulStop(StopOnSignal):
    """On SIGTERM or Ctrl-C: finish the iteration, save ``last.ckpt``, stop; the CLI exits 143/130.

    ``last.ckpt`` goes where the config's ModelCheckpoint keeps it (its ``dirpath``), else to
    ``<run folder>/checkpoints/``. Before training starts (data preparation, setup) there is
    nothing to save, and a second Ctrl-C means "now": both stop at once (``StoppedAtOnce``).
    The CLI installs the handlers as soon as the trainer exists (``install``).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        super().__init__(("SIGTERM", "SIGINT"), check_every_n_steps)
        self.training_started = False
        self._pid = os.getpid()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self.training_started = True  # from here a signal finishes the iteration and saves it

    def install(self) -> None:
        """Takes SIGTERM and Ctrl-C from here on (a signal before training stops the run at once)."""
        self._pid = os.getpid()
        self._install()

    def _on_signal(self, signum: int, frame: Any) -> None:
        received = signal.Signals(signum)
        if os.getpid() != self._pid:  # a forked loader worker: the main process decides
            if received == signal.SIGINT:
                raise KeyboardInterrupt  # which PyTorch's workers take quietly
            return
        if not self.training_started:
            raise StoppedAtOnce(received, f"{received.name} before training started: nothing to save")
        if self.received is not None and received == signal.SIGINT:
            saved = (
                f"iteration {self.saved_step} is saved in {self.saved_to}"
                if self.saved_to
                else "this iteration not saved"
            )
            raise StoppedAtOnce(received, f"a second Ctrl-C: stopped at once ({saved})")
        super()._on_signal(signum, frame)

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def save(self, trainer: L.Trainer) -> Path:
        keeper = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last), None)
        if keeper is None:
            return super().save(trainer)
        # through the ModelCheckpoint that keeps last.ckpt, so that it knows (and does not save
        # the same iteration again as last-v1.ckpt when fit ends)
        keeper._save_last_checkpoint(trainer, keeper._monitor_candidates(trainer))
        return Path(keeper.last_model_path)

    @property
    def exit_status(self) -> int | None:
        """128 + the signal's number (SIGTERM 143, SIGINT 130), as shells report it; None if none came."""
        if self.received is not None:
            return 128 + int(self.received)
        return 128 + int(signal.SIGTERM) if self.stopped else None  # the signal reached another rank
