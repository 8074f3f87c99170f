"""A CSVLogger that claims its version folder atomically and continues its metrics.csv when a run
resumes into its own folder."""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv; this one appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a run writing into an existing version folder (a
    requeued SLURM job, whose folder is named by its job id) appends to ``metrics.csv``
    instead of replacing it (rows logged after the checkpoint a run resumes from appear twice),
    and that a new run claims ``version_N`` by creating it: two runs started at once in the
    same folder get two versions (Lightning's lists the folders, and both picked the same).
    """

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0 or "file" not in self._fs.protocol:
            return version  # other ranks take rank 0's folder (trainer.log_dir broadcasts it)
        root = os.path.join(self._root_dir, self.name)
        os.makedirs(root, exist_ok=True)
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{version}"))  # atomic: one process wins
                return version
            except FileExistsError:
                version += 1

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self._root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
