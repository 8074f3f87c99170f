"""FID, sample grids, GIF, curves and W&B through the real entry point (offline, tiny FID net)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_faces.cli import main
from tests.conftest import REPO, celeba_args, flags, run_cli
from tests.wandb_records import config_keys, history, run_id

TINY_FID = flags(
    {
        "--fid.every_n_epochs": 0,
        "--fid.every_n_steps": 2,
        "--fid.num_samples": 12,
        "--fid.batch_size": 6,
        "--fid.feature_extractor": "tests.test_metrics.TinyFeatures",
    }
)


def wandb_args(data: Path, runs: Path) -> list[str]:
    # the overlay's loggers write to the relative runs/: the tests run in tmp_path
    wandb = ["--config", str(REPO / "configs" / "wandb.yaml"), "--trainer.log_every_n_steps", "1"]
    return [*celeba_args(data, runs), *wandb, *TINY_FID]


def test_fit_with_fid_and_wandb_offline_logs_fid_and_images_and_resumes_the_same_run(tmp_path, fake_celeba):
    runs, cache = tmp_path / "runs", tmp_path / "fid-cache"
    args = [*wandb_args(fake_celeba, runs), "--fid.cache_dir", str(cache)]
    first = run_cli(["fit", *args, "--trainer.max_epochs", "2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "logs offline" not in first.stderr  # WANDB_MODE=offline was set: no notice needed

    (run_file,) = runs.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(run_file)
    fids = [(row["trainer/global_step"], row["val/fid"]) for row in rows if "val/fid" in row]
    # 2 epochs of 4 batches, FID every 2 iterations: once each at 2, 4, 6, 8 and never re-sent
    assert [step for step, _ in fids] == [2, 4, 6, 8] and all(value > 0 for _, value in fids)
    assert sum("samples/filenames" in row for row in rows) >= 3  # a grid at start and after each epoch
    assert list(run_file.parent.glob("files/media/images/samples_*.png"))
    assert {"model", "data", "trainer", "fid"} <= config_keys(run_file)  # the resolved config
    assert any("train/d_loss" in row for row in rows)

    run = runs / "dcgan" / "version_0"
    assert (run / "samples.gif").exists() and Image.open(run / "samples.gif").n_frames >= 3
    # five panels of 220 px: d_loss, g_loss, D(x), D(G(z)) and FID (from the FID callback)
    assert Image.open(run / "curves.png").size == (700, 5 * 220)
    best = list((run / "checkpoints").glob("best-fid-*.ckpt"))
    assert len(best) == 1  # ModelCheckpoint on val/fid keeps the best one
    assert len(list(cache.glob("real-*.pt"))) == 1  # real statistics written once

    # resume: the same W&B run continues, the cached real statistics are reused
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["wandb_run_id"] == run_id(run_file)
    (fid_state,) = [state for name, state in saved["callbacks"].items() if name.startswith("FID")]
    assert fid_state["history"] == [(step, pytest.approx(value, rel=1e-5)) for step, value in fids]
    second = run_cli(["fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", str(last)], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    run_files = list(runs.glob("wandb/offline-run-*/run-*.wandb"))
    assert {run_id(f) for f in run_files} == {run_id(run_file)}
    resumed = torch.load(runs / "dcgan" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    (fid_state,) = [state for name, state in resumed["callbacks"].items() if name.startswith("FID")]
    assert [step for step, _ in fid_state["history"]] == [2, 4, 6, 8, 10, 12]  # the whole history, for curves.png
    assert len(list(cache.glob("real-*.pt"))) == 1


def test_without_credentials_wandb_goes_offline_with_one_line(tmp_path, fake_celeba, monkeypatch):
    runs = tmp_path / "runs"
    env_home = tmp_path / "home"
    env_home.mkdir()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(env_home))  # no ~/.netrc with a key
    monkeypatch.setenv("NETRC", str(env_home / ".netrc"))
    result = subprocess.run(
        [sys.executable, "-m", "lightning_faces", "fit", *celeba_args(fake_celeba, runs),
         "--config", str(REPO / "configs" / "wandb.yaml"), "--trainer.max_steps", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in result.stderr.splitlines() if "logs offline" in line]
    assert len(notices) == 1 and "wandb sync" in notices[0]
    assert list(runs.glob("wandb/offline-run-*/run-*.wandb"))


def wandb_env(tmp_path, **variables) -> dict[str, str]:
    """The environment without any W&B variable (nor the user's .netrc), plus ``variables``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return base | {"HOME": str(home), "NETRC": str(home / ".netrc"), "PYTHONPATH": str(REPO)} | variables


def test_a_key_in_netrc_for_the_server_wandb_uses_counts_as_logged_in(tmp_path, monkeypatch):
    from wandb.sdk import wandb_setup

    import lightning_faces.loggers as loggers

    server = wandb_setup.singleton().settings.base_url  # not api.wandb.ai on current wandb
    netloc = server.split("://")[-1].split("/")[0]
    for name, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    (tmp_path / "home" / ".netrc").write_text(f"machine {netloc}\n  login user\n  password {'k' * 40}\n")
    monkeypatch.setattr(loggers, "reachable", lambda url, timeout=5.0: None)
    loggers.prepare_wandb()
    assert "WANDB_MODE" not in os.environ  # online: the user is logged in
    (tmp_path / "home" / ".netrc").unlink()
    loggers.prepare_wandb()
    assert os.environ["WANDB_MODE"] == "offline"


def test_online_with_a_key_and_no_network_falls_back_to_offline_with_one_line(tmp_path, fake_celeba):
    runs = tmp_path / "runs"
    env = wandb_env(tmp_path, WANDB_MODE="online", WANDB_API_KEY="k" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_faces", "fit", *celeba_args(fake_celeba, runs),
         "--config", str(REPO / "configs" / "wandb.yaml"), "--trainer.max_steps", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in result.stderr.splitlines() if line.startswith("W&B:")]
    assert len(notices) == 1 and "http://127.0.0.1:9 cannot be reached" in notices[0] and "offline" in notices[0]
    assert list(runs.glob("wandb/offline-run-*/run-*.wandb"))


def test_fid_without_weights_stops_at_start_up_naming_the_key_and_command(tmp_path, fake_celeba, capsys, monkeypatch):
    import lightning_faces.metrics as metrics
    from tests.test_metrics import offline

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # the download at start-up fails
    monkeypatch.setattr(metrics, "default_weights_file", lambda: tmp_path / "no-such-weights.pth")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *celeba_args(fake_celeba, tmp_path / "runs"), "--fid.every_n_epochs", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "feature_extractor_weights_path" in err and "download-weights" in err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("step_*.png"))  # no training happened
