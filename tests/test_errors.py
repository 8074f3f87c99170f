"""Bad input and faults: one ``error:`` line, exit status 2, nothing left behind.

Each test runs the real entry point (``main``, or ``python -m lightning_faces`` in a subprocess
where a fresh process matters) the way a user's mistake reaches it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lightning_faces.cli import main
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from tests.conftest import REPO, celeba_args, face_like_image, one_line_error, run_cli


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--data.init_args.batch_size", "0"], "batch_size must be at least 1, got 0"),
        (["--data.batch_size", "-4"], "batch_size must be at least 1, got -4"),
        (["--data.crop", "0"], "crop must be a fraction of the image width in (0, 1], got 0"),
        (["--data.crop", "1.5"], "crop must be a fraction"),
        (["--data.crop", "-1"], "crop must be a fraction"),
        (["--data.samples_per_epoch", "2"], "samples_per_epoch 2 is smaller than batch_size 4"),
    ],
)
def test_checks_in_a_datamodule_constructor_are_one_line(tmp_path, capsys, fake_celeba, override, expected):
    # jsonargparse builds the datamodule inside its Union check and wraps our error in its own
    line = one_line_error(capsys, ["fit", *celeba_args(fake_celeba, tmp_path / "runs"), *override])
    assert expected in line
    assert not (tmp_path / "runs").exists()


def test_a_negative_learning_rate_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, fake_celeba):
    args = ["fit", *celeba_args(fake_celeba, tmp_path / "runs"), "--model.d_optimizer.init_args.lr", "-0.1"]
    line = one_line_error(capsys, args)
    assert "model.d_optimizer" in line and "Invalid learning rate: -0.1" in line
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 2-iteration run of configs/dcgan.yaml at 16px: its data, runs folder and last.ckpt."""
    from tests.conftest import write_celeba

    root = tmp_path_factory.mktemp("trained")
    data = write_celeba(root / "data")
    extra_checkpoints = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1"]
    result = run_cli(
        ["fit", *celeba_args(data, root / "runs"), "--trainer.max_steps", "2", *extra_checkpoints], cwd=root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return data, root / "runs", root / "runs" / "dcgan" / "version_0" / "checkpoints" / "last.ckpt", result.stderr


def test_fit_prints_no_warning_that_does_not_apply_and_keeps_those_that_do(trained):
    stderr = trained[3]
    for noise in ("manual optimization", "litlogger", "LeafSpec"):
        assert noise not in stderr
    # a warning the user can act on still comes through (4 batches < log_every_n_steps 50)
    assert "smaller than the logging interval" in stderr


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch CODE_RAN",))


@pytest.mark.parametrize("subcommand", ["fit", "predict"])
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "is damaged (cut short or corrupted"),
        ("empty", "is empty (0 bytes)"),
        ("code", "holds pickled Python objects (posix.system)"),
    ],
)
def test_a_bad_checkpoint_path_is_one_line_and_runs_no_code(
    tmp_path, capsys, monkeypatch, trained, subcommand, damage, expected
):
    data, runs, last, _ = trained
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        bad.write_bytes(last.read_bytes()[:1000])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"g_width": RunsCode()}}, bad)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [subcommand, *celeba_args(data, tmp_path / "runs"), "--ckpt_path", str(bad)])
    assert str(bad) in line and expected in line
    assert not (tmp_path / "CODE_RAN").exists()


def test_a_checkpoint_of_another_image_size_names_the_setting(tmp_path, capsys, trained):
    data, runs, last, _ = trained
    args = ["fit", *celeba_args(data, tmp_path / "runs"), "--data.image_size", "32", "--ckpt_path", str(last)]
    line = one_line_error(capsys, args)
    assert str(last) in line and "trained on 16px images, but data.image_size is 32" in line
    assert "--data.image_size 16" in line


def test_a_checkpoint_of_other_widths_says_it_overrides_them(tmp_path, capsys, trained):
    data, runs, last, _ = trained
    width = "--model.generator.init_args.width"
    args = ["fit", *celeba_args(data, tmp_path / "runs"), width, "8", "--trainer.max_steps", "3"]
    main([*args, "--ckpt_path", str(last)])  # in this process: no fresh one needed to see the notice
    notice = "sets model.generator.init_args.width 4 (the config says 8): using the checkpoint's"
    assert notice in capsys.readouterr().err


def test_a_checkpoint_from_before_injected_networks_is_refused_in_one_line(tmp_path, capsys, trained):
    data, runs, last, _ = trained
    old = tmp_path / "old.ckpt"
    saved = torch.load(last, weights_only=True)
    saved["hyper_parameters"] = {"latent_dim": 8, "image_size": 16, "g_width": 4, "d_width": 4}  # 0.1's settings
    torch.save(saved, old)
    line = one_line_error(capsys, ["fit", *celeba_args(data, tmp_path / "runs"), "--ckpt_path", str(old)])
    assert str(old) in line and "written by lightning_faces 0.1" in line
    with pytest.raises(FacesError, match="written by lightning_faces 0.1"):
        GAN.from_checkpoint(old)


def test_a_checkpoint_naming_a_class_from_elsewhere_is_not_built(tmp_path, trained):
    data, runs, last, _ = trained
    assert GAN.from_checkpoint(last).iteration == 2  # what the CLI wrote is rebuilt
    hostile = tmp_path / "hostile.ckpt"
    saved = torch.load(last, weights_only=True)
    saved["hyper_parameters"]["generator"] = {"class_path": "os.system", "init_args": {"command": "touch CODE_RAN"}}
    torch.save(saved, hostile)
    with pytest.raises(FacesError, match="names os.system, which is not a lightning_faces network"):
        GAN.from_checkpoint(hostile)
    assert not (tmp_path / "CODE_RAN").exists()


def test_top_level_help_lists_every_command_under_the_real_program_name():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_faces", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m lightning_faces")
    for command in ("fit", "validate", "test", "predict", "prepare", "fid", "download-weights"):
        assert f"    {command} " in result.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "lightning_faces", "fit", "--model.no_such_key", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert wrong.returncode == 2 and "python -m lightning_faces fit --help" in wrong.stderr
    assert "__main__.py" not in wrong.stderr


def test_fid_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import lightning_faces.metrics as metrics
    import lightning_faces.tools as tools
    from lightning_faces.metrics import make_fid
    from tests.test_metrics import TinyFeatures

    one = tmp_path / "one"
    one.mkdir()
    face_like_image(0, 40, 40).save(one / "0.png")
    many = tmp_path / "many"
    many.mkdir()
    for index in range(4):
        face_like_image(index, 40, 40).save(many / f"{index}.png")
    line = one_line_error(capsys, ["fid", str(many), str(many), "--batch-size", "0"])
    assert "--batch-size: must be at least 1, got 0" in line
    # without weights, the fid command names its own option, not the training config's key
    monkeypatch.setattr(metrics, "default_weights_file", lambda: tmp_path / "absent.pth")
    monkeypatch.setattr(
        metrics, "download_weights", lambda output=None: (_ for _ in ()).throw(metrics.FacesError("offline"))
    )
    line = one_line_error(capsys, ["fid", str(many), str(many)])
    assert "--weights PATH" in line and "feature_extractor_weights_path" not in line
    monkeypatch.setattr(tools, "check_inception_weights", lambda path, option: None)
    monkeypatch.setattr(tools, "make_fid", lambda weights, resize: make_fid(feature_extractor=TinyFeatures()))
    line = one_line_error(capsys, ["fid", str(one), str(many), "--image-size", "16"])
    assert f"{one} holds 1 image: FID needs at least 2" in line


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_finish_the_iteration_save_last_and_exit_non_zero(tmp_path, fake_celeba, signum, status):
    runs = tmp_path / "runs"
    args = ["fit", *celeba_args(fake_celeba, runs), "--trainer.max_steps", "100000", "--trainer.max_epochs", "-1"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_faces", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    run = runs / "dcgan" / "version_0"
    for _ in range(600):  # training has started once the first grid is written
        if (run / "samples" / "step_0000000.png").exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-3000:]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"], checkpoints  # no half-written temporary, no second copy
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    step = saved["global_step"]
    assert step > 0 and saved["iteration"] == step
    assert f"finished iteration {step}, saved " in err
    assert "resume with --ckpt_path" in err
    assert (run / "metrics.csv").read_text().count("\n") > 1  # the loggers were flushed
    resumed = run_cli(
        [
            "fit",
            *celeba_args(fake_celeba, runs),
            "--trainer.max_steps",
            str(step + 2),
            "--trainer.max_epochs",
            "-1",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
        ],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        torch.load(runs / "dcgan" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == step + 2
    )


def test_two_runs_started_at_once_in_one_folder_get_two_versions(tmp_path):
    from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

    from lightning_faces.loggers import CSVLogger

    # both runs resolve their version before either has written anything: Lightning's logger
    # lists the folders and gives both version_0 (the second run then died on its config.yaml)
    plain = [LightningCSVLogger(str(tmp_path / "plain"), name="dcgan") for _ in range(2)]
    assert [logger.version for logger in plain] == [0, 0]
    ours = [CSVLogger(str(tmp_path / "runs"), name="dcgan") for _ in range(3)]
    assert [logger.version for logger in ours] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "runs" / "dcgan").iterdir()) == ["version_0", "version_1", "version_2"]


def test_temporaries_of_killed_writers_are_removed_at_the_next_start(tmp_path, trained):
    from lightning_faces.files import owner_tag

    data, runs, last, _ = trained
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner_tag().rsplit("-", 1)[0]
    folder = last.parent
    stale = folder / f".last.ckpt.{host}-{int(dead.stdout)}.abc123xy.tmp"  # kill -9 during a save
    live = folder / f".last.ckpt.{owner_tag()}.zz9xx8yy.tmp"  # a writer that is still running
    stale.write_bytes(b"\0" * 100)
    live.write_bytes(b"\0" * 100)
    args = ["fit", *celeba_args(data, tmp_path / "runs"), "--trainer.max_steps", "3", "--ckpt_path", str(last)]
    main(args)
    assert not stale.exists() and live.exists()
    live.unlink()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system of its own (tmpfs; the tests run as root in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class FillDisk(__import__("lightning").Callback):
    """Once iteration ``step`` is saved (at the start of the next), fills the disk holding
    ``folder`` but for a few KiB. (Lightning runs ModelCheckpoint after every other callback.)"""

    def __init__(self, folder, step: int) -> None:
        self.folder, self.step = folder, step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            import shutil

            free = shutil.disk_usage(self.folder).free
            (self.folder / "filler").write_bytes(b"\0" * (free - 8192))


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous_one(small_disk, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_faces.errors import FacesError
    from tests.test_module import make_model, train

    saver = ModelCheckpoint(dirpath=small_disk, save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(FacesError) as error:
        train(tmp_path, make_model(), steps=4, callbacks=[saver, FillDisk(small_disk, 1)], enable_checkpointing=True)
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot save checkpoint {small_disk / 'last.ckpt'}: the disk holding {small_disk} is full" in message
    assert "the previous last.ckpt is intact" in message
    kept = torch.load(small_disk / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 1  # the checkpoint of iteration 1, whole
    assert [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")] == []  # no partial file left


def test_a_read_only_run_folder_is_one_line(tmp_path, capsys, fake_celeba):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root (CI runs as root); chmod does not stop root")
    mount = tmp_path / "readonly"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)], check=True)
    try:
        line = one_line_error(capsys, ["fit", *celeba_args(fake_celeba, mount / "runs")])
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert f"cannot write {mount / 'runs'}" in line and "read-only file system" in line


def test_fid_scores_a_checkpoint_that_the_cli_wrote(trained, capsys, monkeypatch):
    import lightning_faces.tools as tools
    from lightning_faces.metrics import make_fid
    from tests.test_metrics import TinyFeatures

    data, runs, last, _ = trained  # holds LightningCLI's own hyperparameter entries
    monkeypatch.setattr(tools, "check_inception_weights", lambda path, option: None)
    monkeypatch.setattr(tools, "make_fid", lambda weights, resize: make_fid(feature_extractor=TinyFeatures()))
    for generator in ("raw", "ema"):
        main(["fid", str(data), str(last), "--num-samples", "8", "--batch-size", "4", "--generator", generator])
        out = capsys.readouterr().out
        assert "B: 8 images" in out and "protocol: A 24, B 8, image size 16" in out and "FID " in out
