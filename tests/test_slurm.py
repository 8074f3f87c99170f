"""The sbatch scripts in slurm/, submitted to a real single-node SLURM cluster, in CPU mode.

Each job runs 2 DDP tasks (gloo) on a tiny model: 16 training images, 8 per task, so every
iteration is one whole epoch and an interrupted run can be compared with an uninterrupted one.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, write_celeba
from tests.slurm_cluster import SlurmCluster, missing_requirements

pytestmark = pytest.mark.timeout(900)

CPU_MODE = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]  # the scripts ask for GPUs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        if os.environ.get("LIGHTNING_FACES_REQUIRE_SLURM"):
            pytest.fail(f"LIGHTNING_FACES_REQUIRE_SLURM is set, but {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Where jobs are submitted from, laid out like a clone: slurm/logs/ exists."""
    root = tmp_path_factory.mktemp("submit")
    (root / "slurm" / "logs").mkdir(parents=True)
    # 64 images at 2 tasks x 8: 4 iterations an epoch, so a signal at iteration 10 comes mid-epoch
    write_celeba(root / "data", splits=(64, 0, 0))
    return root


def job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the same python
        "PYTHONPATH": str(REPO),  # configs name test callbacks
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
    }


def write_config(path: Path, name: str, max_steps: int, callbacks: list[dict] = (), **sections: dict) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": max_steps,
            "log_every_n_steps": 5,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [
                {"class_path": "lightning_faces.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": name}}
            ],
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                *callbacks,
            ],
        },
        "model": {
            "generator": {
                "class_path": "lightning_faces.nets.DCGANGenerator",
                "init_args": {"latent_dim": 8, "width": 4},
            },
            "discriminator": {"class_path": "lightning_faces.nets.DCGANDiscriminator", "init_args": {"width": 4}},
            "num_fixed_samples": 4,
            "ema_decay": 0.9,
        },
        "fid": {"every_n_epochs": 0, "every_n_steps": 0},
        "data": {
            "class_path": "lightning_faces.data.CelebADataModule",
            "init_args": {
                "data_dir": "data",
                "image_size": 16,
                "batch_size": 8,
                "num_workers": 0,
                "val_split": None,
                "flip": True,  # drawn per (seed, iteration, rank): a resumed run flips the same
            },
        },
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(config[key], dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def fid_every_10(cache: Path) -> dict:
    return {
        "every_n_steps": 10,
        "num_samples": 8,
        "batch_size": 4,
        "feature_extractor": "tests.test_metrics.TinyFeatures",
        "cache_dir": str(cache),
    }


def metrics(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(cluster, workspace):
    """single_node.sbatch, 30 iterations on 2 tasks, run to the end."""
    config = write_config(workspace / "plain.yaml", "plain", 30, fid=fid_every_10(workspace / "fid-plain"))
    job = cluster.submit(
        REPO / "slurm" / "single_node.sbatch",
        [*CPU_MODE, "--ntasks-per-node=2"],
        ["--config", str(config)],
        workspace,
        job_env(),
    )
    records = cluster.wait(job, ("COMPLETED",))
    return job, records


def test_single_node_job_completes_leaving_log_and_checkpoint_where_readme_says(uninterrupted, workspace):
    job, (record,) = uninterrupted
    log = (workspace / "slurm" / "logs" / f"faces-{job}.out").read_text()
    assert "Starting with 2 processes" in log and "`Trainer.fit` stopped: `max_steps=30` reached." in log
    run = workspace / "runs" / "plain" / f"slurm-{job}"
    checkpoint = load(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 30
    assert [row["step"] for row in metrics(run) if row.get("val/fid")] == ["10", "20", "30"]


def test_multi_node_script_runs_on_the_nodes_it_is_given(cluster, workspace):
    # one node here: the script's own settings (devices, num_nodes from SLURM) must still hold
    config = write_config(workspace / "multi.yaml", "multi", 4)
    job = cluster.submit(
        REPO / "slurm" / "multi_node.sbatch",
        [*CPU_MODE, "--nodes=1", "--ntasks-per-node=2"],
        ["--config", str(config)],
        workspace,
        job_env(),
    )
    cluster.wait(job, ("COMPLETED",))
    assert load(workspace / "runs" / "multi" / f"slurm-{job}" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_warning_signal_saves_requeues_and_the_job_resumes_where_it_stopped(cluster, workspace, uninterrupted):
    marker = workspace / "paused-at-10"
    pause = {"class_path": "tests.probes.PauseAt", "init_args": {"step": 10, "marker": str(marker)}}
    loggers = {
        "logger": [
            {"class_path": "lightning_faces.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "preempted"}},
            {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": "runs", "project": "t"}},
        ]
    }
    config = write_config(
        workspace / "preempted.yaml",
        "preempted",
        30,
        callbacks=[pause],
        fid=fid_every_10(workspace / "fid-preempted"),
        trainer=loggers,
    )
    # the same config as `uninterrupted` but for the pause and the W&B logger
    job = cluster.submit(
        REPO / "slurm" / "single_node.sbatch",
        [*CPU_MODE, "--ntasks-per-node=2"],
        ["--config", str(config)],
        workspace,
        job_env(),
    )
    deadline = time.monotonic() + 300
    while not marker.exists():  # the job holds at iteration 10 until the signal comes
        assert time.monotonic() < deadline, "the job never reached iteration 10"
        cluster.wait(job, ("PENDING", "RUNNING"))  # fails at once if the job ended instead
        time.sleep(0.5)
    cluster.signal(job, "USR1")  # what --signal=USR1@90 sends 90 s before the time limit

    (requeued,) = cluster.wait(job, ("PENDING",), timeout=120)
    assert requeued["Restarts"] == "1"
    cluster.start_now(job)
    (record,) = cluster.wait(job, ("COMPLETED",))
    assert record["Restarts"] == "1"

    run = workspace / "runs" / "preempted" / f"slurm-{job}"
    log = (workspace / "slurm" / "logs" / f"faces-{job}.out").read_text()
    assert f"SIGUSR1: finished iteration 10, saved {run.relative_to(workspace)}/checkpoints/requeue.ckpt" in log
    assert f"SLURM job {job} requeued" in log
    assert f"SLURM job {job}, restart 1: resuming from {run.relative_to(workspace)}/checkpoints/requeue.ckpt" in log
    assert log.count("FID: real statistics computed and saved to") == 1
    assert log.count("FID: real statistics loaded from") == 1  # after the restart: the cache

    # the step count continued: one metrics.csv holding each logged step once, as the
    # uninterrupted run's does (a restart from 0 would log steps 4 and 9 twice), FID at 10, 20, 30
    plain_job, _ = uninterrupted
    plain_run = workspace / "runs" / "plain" / f"slurm-{plain_job}"
    steps = sorted(int(row["step"]) for row in metrics(run))
    assert steps == sorted(int(row["step"]) for row in metrics(plain_run)) and steps[0] < 10 < steps[-1]
    assert [row["step"] for row in metrics(run) if row.get("val/fid")] == ["10", "20", "30"]
    final = load(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 30 and final["iteration"] == 30

    # nothing a checkpoint promised was lost: weights, Adam moments, EMA, (keyed by the
    # iteration) the latents and flips, and the data position mid-epoch (iteration 10 is the
    # 3rd of epoch 2: the requeued job trains on that epoch's remaining batches, no others);
    # the run ends where the uninterrupted one did, up to float noise
    plain = load(plain_run / "checkpoints" / "last.ckpt")
    for name, value in plain["state_dict"].items():
        assert torch.allclose(final["state_dict"][name].float(), value.float(), atol=1e-6), name
    for mine, theirs in zip(final["optimizer_states"], plain["optimizer_states"], strict=True):
        for slot, state in theirs["state"].items():
            assert torch.allclose(mine["state"][slot]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-12)

    # the same W&B run, continued: two offline run folders (one per start) with one id
    run_id = final["wandb_run_id"]
    starts = sorted((workspace / "runs" / "wandb").glob("offline-run-*"))
    assert len(starts) == 2 and all(folder.name.endswith(f"-{run_id}") for folder in starts)


def test_job_array_runs_every_task_with_its_sweep_value(cluster, workspace):
    config = write_config(workspace / "sweep.yaml", "sweep", 4)
    env = {**job_env(), "SWEEP_ARG": "--model.ema_decay", "SWEEP_VALUES": "0.5 0.99"}
    job = cluster.submit(
        REPO / "slurm" / "array.sbatch", [*CPU_MODE, "--array=0-1"], ["--config", str(config)], workspace, env
    )
    records = cluster.wait(job, ("COMPLETED",))
    assert sorted(record["ArrayTaskId"] for record in records) == ["0", "1"]
    for task, value in (("0", 0.5), ("1", 0.99)):
        log = (workspace / "slurm" / "logs" / f"faces-sweep-{job}_{task}.out").read_text()
        assert f"array task {task}: --model.ema_decay" in log
        run = workspace / "runs" / "sweep" / f"slurm-{job}_{task}"
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["ema_decay"] == value
        assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 4
