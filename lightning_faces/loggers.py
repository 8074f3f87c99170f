"""A CSVLogger that continues its metrics.csv when a run resumes into its own folder."""

from __future__ import annotations

import csv
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
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
    instead of replacing it. Rows logged after the checkpoint a run resumes from appear twice.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self._root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
