"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd on localhost.

Everything lives in one temporary folder (config, state, spool, logs, munge key and socket)
and on two free ports, so it neither needs nor disturbs a system SLURM. Needs Debian's
``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` packages, and root (slurmd starts
jobs as their users). ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def missing_requirements() -> str | None:
    """Why a cluster cannot start here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found): "
            "apt-get install slurmctld slurmd slurm-client munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "slurmd has to run as root to start jobs, and these tests do not run as root"
    return None


class SlurmCluster:
    """Starts the daemons in ``root``; ``run`` submits and waits, ``stop`` tears down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files: list[Path] = []

    def start(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon(
            ["munged", "--force", f"--key-file={key}", f"--socket={munge / 'socket'}"]
            + [f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}"]
            + [f"--seed-file={munge / 'munged.seed'}"],
            munge / "munged.pid",
        )
        self.conf.write_text(self._config(munge / "socket"))
        self._daemon(["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
        self._daemon(["slurmd", "-f", str(self.conf)], self.root / "slurmd.pid")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test SLURM cluster did not come up; logs in {self.root / 'log'}")

    def _config(self, munge_socket: Path) -> str:
        root = self.root
        return "\n".join(
            [
                "ClusterName=lightningfaces",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",  # no cgroups needed in a container
                "TaskPlugin=task/none",
                "MpiDefault=none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",  # array tasks share the node, a CPU each
                "ReturnToService=2",
                "JobRequeue=1",
                "KillWait=5",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
                "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _daemon(self, command: list[str], pid_file: Path) -> None:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} did not start: {result.stderr.strip() or result.stdout.strip()}")
        self.pid_files.append(pid_file)

    def stop(self) -> None:
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        for pid_file in reversed(self.pid_files):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass

    # jobs
    def submit(self, script: Path, sbatch_args: list[str], args: list[str], cwd: Path, env: dict[str, str]) -> str:
        result = subprocess.run(
            ["sbatch", "--parsable", *sbatch_args, str(script), *args],
            cwd=cwd,
            env={**env, "SLURM_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def show(self, job: str) -> list[dict[str, str]]:
        """``scontrol show job`` as one dict per job (an array job lists each task)."""
        result = subprocess.run(["scontrol", "show", "job", job], env=self.env, capture_output=True, text=True)
        records = [record for record in result.stdout.split("\n\n") if record.strip()]
        return [dict(re.findall(r"(\w+)=(\S*)", record)) for record in records]

    def wait(self, job: str, states: tuple[str, ...], timeout: float = 300) -> list[dict[str, str]]:
        """Waits until every record of the job is in one of ``states``; returns the records."""
        deadline = time.monotonic() + timeout
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.show(job)
            if records and all(record.get("JobState") in states for record in records):
                return records
            finished = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
            stuck = [r for r in records if r.get("JobState") in finished - set(states)]
            assert not stuck, f"job {job} ended {stuck[0].get('JobState')}, expected {states}"
            time.sleep(0.5)
        raise AssertionError(f"job {job} not {states} after {timeout} s: {[r.get('JobState') for r in records]}")

    def signal(self, job: str, name: str) -> None:
        """Sends a signal to the job's tasks, as ``--signal=NAME@seconds`` does before the limit."""
        subprocess.run(["scancel", f"--signal={name}", job], env=self.env, check=True)

    def start_now(self, job: str) -> None:
        """SLURM holds a requeued job for 120 s (its BeginTime); the tests do not wait that long.

        Not at once, though: slurmd refuses a job credential issued in the same second as the
        requeue revoked the old one ("Job credential revoked"), so start 2 s later.
        """
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=self.env, check=True)
