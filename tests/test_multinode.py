"""Two nodes as Lightning sees them, on one machine: two launches of the CLI with
``--trainer.num_nodes 2``, NODE_RANK 0 and 1 and MASTER_ADDR 127.0.0.1, one process each (what a
user runs on two machines without a scheduler, and what SLURM's script does per node).

Each "node" runs in a folder of its own, so relative paths (the run folder) are node-local, as on
two machines; a prepared_dir is node-local when each node names its own, shared when both name one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, celeba_args, flags, free_port

pytestmark = pytest.mark.timeout(600)  # a collective that never matches hangs: fail instead


def launch(node: int, root: Path, data: Path, port: int, prepared: Path, extra: list[str]) -> subprocess.Popen:
    """Starts node ``node`` of a 2-node run in ``root/node<node>``."""
    cwd = root / f"node{node}"
    cwd.mkdir(exist_ok=True)
    args = [
        "fit",
        *celeba_args(data, Path("runs")),  # relative: each node's own disk
        *flags({"--trainer.num_nodes": 2, "--trainer.devices": 1, "--trainer.strategy": "ddp"}),
        *flags({"--data.prepared_dir": prepared, "--data.flip": "false", "--trainer.max_epochs": -1}),
        "--trainer.callbacks+=tests.probes.DumpState",
        f"--trainer.callbacks.folder={root / 'state'}",
        *extra,
    ]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_faces", *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )


def builds(stderr: str) -> list[str]:
    """The prepared splits a node decoded: each build starts its progress bar at 0%."""
    return re.findall(r"preparing (.+?):\s+0%", stderr)


def prepared_folders(prepared: Path) -> list[Path]:
    return sorted(p for p in prepared.iterdir() if (p / "meta.json").is_file()) if prepared.exists() else []


def test_two_nodes_train_alike_prepare_per_disk_save_on_rank_0_and_stop_together(tmp_path, fake_celeba):
    # 1. each node with its own prepared_dir (node-local disks); SIGTERM to node 1 only
    port = free_port()
    marker, release = tmp_path / "holding", tmp_path / "release"
    hold = ["--trainer.callbacks+=tests.probes.HoldAt", "--trainer.callbacks.step=5"]
    hold += [f"--trainer.callbacks.marker={marker}", f"--trainer.callbacks.release={release}"]
    local = [tmp_path / "node0" / "prepared", tmp_path / "node1" / "prepared"]
    nodes = [launch(n, tmp_path, fake_celeba, port, local[n], [*hold, "--trainer.max_steps", "1000"]) for n in (0, 1)]
    for _ in range(1800):
        if marker.exists() or any(node.poll() is not None for node in nodes):
            break
        time.sleep(0.1)
    assert marker.exists(), [node.communicate()[1][-3000:] for node in nodes]
    nodes[1].send_signal(signal.SIGTERM)  # one node only: the other learns it at the ranks' next check
    time.sleep(0.5)
    release.write_text("go")
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [143, 143], [e[-3000:] for e in errors]
    checkpoints = sorted((tmp_path / "node0" / "runs").rglob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["last.ckpt"], checkpoints
    saved = torch.load(checkpoints[0], weights_only=True)
    assert saved["global_step"] == 10  # the first check after the signal (every 10 iterations under DDP)
    assert "a signal on another rank: finished iteration 10" in errors[0]
    assert list((tmp_path / "node1").rglob("*.ckpt")) == []  # global rank 0 alone writes checkpoints
    assert not (tmp_path / "node1" / "runs").exists()  # nor any run folder
    for node, folder in enumerate(local):  # each node decoded its own copy, once
        assert len(prepared_folders(folder)) == len(builds(errors[node])) >= 1, errors[node][-3000:]
    assert builds(errors[0]) == builds(errors[1])

    # 2. resume both from the checkpoint, with one prepared_dir both nodes share
    shared = tmp_path / "shared-prepared"
    resume = ["--ckpt_path", str(checkpoints[0]), "--trainer.max_steps", "14"]
    port2 = free_port()
    nodes = [launch(n, tmp_path, fake_celeba, port2, shared, resume) for n in (0, 1)]
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [e[-3000:] for e in errors]
    states = [torch.load(tmp_path / "state" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [s["global_step"] for s in states] == [14, 14] and [s["world_size"] for s in states] == [2, 2]
    assert [s["iteration"] for s in states] == [14, 14]
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]), key  # both nodes end with the same weights
    # the shared disk: one node decoded each split, the other waited for it (the lock) or found it ready
    assert len(builds(errors[0] + errors[1])) == len(prepared_folders(shared)) >= 1
