"""SLURM: a fixed run folder per job, a checkpoint and requeue on the warning signal, resume.

The sbatch scripts in ``slurm/`` ask for ``--signal=USR1@90``: SLURM sends SIGUSR1 to every
task 90 s before the time limit (and a preempting scheduler can send it too). ``Requeue`` then
finishes the current iteration, saves ``requeue.ckpt`` in the run folder and stops training;
once fit has wound down and the loggers are flushed, rank 0 runs ``scontrol requeue``. The
requeued job has the same job id, so the CLI finds the same run folder and resumes from its
latest checkpoint.

Lightning's own SLURM handler saves from inside the signal handler, wherever the step happens
to be (between D's and G's update, or inside a collective on one rank but not another);
``Requeue`` only sets a flag there and acts between iterations, on all ranks together.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_faces.signals import StopOnSignal


def job_id() -> str | None:
    """``1234`` for a job, ``1234_5`` for task 5 of array job 1234, ``None`` outside SLURM."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def in_slurm_job() -> bool:
    """True in tasks that srun started (where Lightning takes ranks from SLURM too)."""
    return job_id() is not None and SLURMEnvironment.detect()


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint under folder with the most iterations; on a tie, ``requeue.ckpt``.

    The tie matters: after the warning signal both ``requeue.ckpt`` (saved at the end of the
    iteration) and epoch-end checkpoints of the epoch cut short hold the same iteration, and
    only the former resumes that epoch where it stopped.
    """
    best, best_key = None, None
    for path in folder.rglob("*.ckpt"):
        try:  # mmap: reads the step without reading every tensor
            step = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
        except Exception:  # half-written by a job killed without warning: not a candidate
            continue
        key = (step, path.name == "requeue.ckpt", path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


class Requeue(StopOnSignal):
    """On SLURM's warning signal: checkpoint between iterations, requeue the job, stop.

    Args:
        folder: the run folder; the checkpoint is ``<folder>/checkpoints/requeue.ckpt``.
        signal_name: the warning signal (``--signal=USR1@90`` in the sbatch scripts).
        check_every_n_steps: under DDP, how often the ranks agree on whether a signal came
            (one small all-reduce); alone, a rank checks every iteration for free.
    """

    def __init__(self, folder: str, signal_name: str = "SIGUSR1", check_every_n_steps: int = 10) -> None:
        super().__init__((signal_name,), check_every_n_steps)
        self.folder = Path(folder)

    @property
    def signalled(self) -> bool:
        return self.received is not None

    def checkpoint_path(self, trainer: L.Trainer | None = None) -> Path:
        return self.folder / "checkpoints" / "requeue.ckpt"

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # requeueing ends this job at once (SIGTERM), so it comes last, after the end-of-fit
        # writes (grids, curves) and with the loggers flushed
        if stage == "fit" and self.stopped and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.finalize("success")
            self._requeue()
        super().teardown(trainer, module, stage)

    def _requeue(self) -> None:
        job = job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True, timeout=60)
            failure = result.stderr.strip() if result.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as error:
            failure = str(error)
        if failure:
            rank_zero_warn(
                f"`scontrol requeue {job}` failed ({failure}); the run stops here. Resume it with "
                f"`--ckpt_path {self.checkpoint_path()}`"
            )
        else:
            rank_zero_info(f"SLURM job {job} requeued; it resumes from {self.checkpoint_path()}")
