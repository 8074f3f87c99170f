"""Loggers: a CSVLogger that claims its version folder atomically and continues its metrics.csv
when a run resumes into its own folder; W&B that never waits at a prompt or on a dead network."""

from __future__ import annotations

import csv
import netrc
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback
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
                _claimed.append(Path(root) / f"version_{version}")
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


_claimed: list[Path] = []  # version folders this process created, for a start that fails


class RunStarted(Callback):
    """Marks the run folder as worth keeping once the first batch of any loop is done (the CLI
    adds it); until then a failed start removes it (``remove_unstarted_run_folders``)."""

    started = False

    def _started(self, trainer: Any, *args: Any) -> None:
        if not trainer.sanity_checking:  # the validation batches before training start nothing
            RunStarted.started = True

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _started


def new_process_run() -> None:
    """Forgets earlier runs of this process (tests call the CLI many times in one process)."""
    _claimed.clear()
    RunStarted.started = False


def remove_unstarted_run_folders() -> list[Path]:
    """Removes the version folders this process created for a run that stopped before its first
    batch (a bad dataset, weights file or signal at start-up): a failed start leaves no run
    folder behind, and the next run gets the version number this one had."""
    if RunStarted.started:
        return []
    removed = [folder for folder in _claimed if folder.is_dir()]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    _claimed.clear()
    return removed


def wandb_credentials() -> bool:
    """Whether W&B has credentials for the server it will talk to, asked of wandb (no network).

    Its environment variables, a ``.netrc`` entry for its configured server (``WANDB_BASE_URL``
    or its settings: not api.wandb.ai on current versions), or a key in its settings.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth import wbnetrc

        settings = wandb_setup.singleton().settings
        return bool(settings.api_key or wbnetrc.read_netrc_auth(host=settings.base_url))
    except ImportError:  # a wandb without these modules: read .netrc for the server ourselves
        url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        try:
            return bool(netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(url).hostname or url))
        except (OSError, netrc.NetrcParseError):
            return False
    except Exception:  # noqa: BLE001 (a key in a bad format: let wandb.init report it)
        return True


def wandb_server() -> str:
    try:
        from wandb.sdk import wandb_setup

        return wandb_setup.singleton().settings.base_url
    except Exception:  # noqa: BLE001
        return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to ``url``'s host opens within ``timeout`` s, else why not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or url, port), timeout=timeout).close()
        return None
    except OSError as error:
        return str(error) or type(error).__name__


def prepare_wandb() -> None:
    """Before a W&B logger exists: offline without credentials (a batch job would hang at the
    login prompt), and offline with a line when its server cannot be reached (wandb.init would
    give up after about 100 s with a traceback). Says which in one line."""
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled", "dryrun"):
        return
    if not wandb_credentials():
        why = "no API key found (WANDB_API_KEY or `wandb login`)"
    else:
        server = wandb_server()
        problem = reachable(server)
        if problem is None:
            return
        why = f"{server} cannot be reached ({problem})"
    os.environ["WANDB_MODE"] = "offline"
    try:  # wandb's settings read the environment when asked above: have wandb.init read it anew
        from wandb.sdk import wandb_setup

        wandb_setup.teardown()
    except Exception:  # noqa: BLE001
        pass
    print(
        f"W&B: {why}, so this run logs offline under <save_dir>/wandb/; "
        "upload it later with `wandb sync <save_dir>/wandb/offline-run-*`",
        file=sys.stderr,
    )


class KeepWandbRun(Callback):
    """Writes the W&B run's id into every checkpoint: a run resumed from it continues the same
    W&B run (the CLI reads it back) instead of starting a new one."""

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version
