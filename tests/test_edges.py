"""The edges a tester reaches on a fresh clone: every file that is not what a command expects,
every output path that cannot be written, every value out of range, is one ``error:`` line
(exit status 2) naming the file or key and what to do; nothing is left behind."""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_faces.checkpoint import load_checkpoint
from lightning_faces.cli import main
from lightning_faces.errors import FacesError
from tests.conftest import PLAY_TINY, REPO, face_like_image, free_port, one_line_error, run_cli


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    face_like_image(0, 16, 16).save(buffer, format="PNG")
    return buffer.getvalue()


def random_bytes() -> bytes:
    data = bytearray(random.Random(0).randbytes(4096))
    data[0] = 0x17  # not a pickle's or a zip's first byte (those are read as damaged checkpoints)
    return bytes(data)


# file name, contents, what the message must call it
NOT_CHECKPOINTS = [
    ("note.ckpt", b"this is not a checkpoint", "is a text file, not a PyTorch checkpoint"),
    ("hello.ckpt", b"hello world\n", "is a text file, not a PyTorch checkpoint"),
    ("face.png", png_bytes(), "is a PNG image, not a PyTorch checkpoint"),
    ("config.yaml", b"model:\n  generator: {}\n", "is a YAML file, not a PyTorch checkpoint"),
    ("meta.json", b'{"a": 1}', "is a JSON or text file, not a PyTorch checkpoint"),
    ("noise.ckpt", random_bytes(), "is a file of unknown content, not a PyTorch checkpoint"),
]


@pytest.mark.parametrize(("name", "contents", "expected"), NOT_CHECKPOINTS, ids=[n for n, _, _ in NOT_CHECKPOINTS])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, name, contents, expected):
    path = tmp_path / name
    path.write_bytes(contents)
    with pytest.raises(FacesError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert "could run code" not in message  # harmless files are not called dangerous


def test_damage_and_code_are_told_apart(tmp_path, checkpoints):
    whole = checkpoints["plain"].read_bytes()
    for cut in (1000, len(whole) // 2, len(whole) - 10):
        truncated = tmp_path / f"cut{cut}.ckpt"
        truncated.write_bytes(whole[:cut])
        with pytest.raises(FacesError, match=r"is damaged \(cut short or corrupted") as error:
            load_checkpoint(truncated)
        assert "could run code" not in str(error.value)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(3))  # torch's old format still loads
    half = tmp_path / "legacy-half.pt"
    half.write_bytes(legacy.read_bytes()[:60])
    with pytest.raises(FacesError, match="is damaged"):
        load_checkpoint(half)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": RunsCode()}, evil)
    with pytest.raises(FacesError, match=r"holds pickled Python objects \(posix.system\)"):
        load_checkpoint(evil)
    assert not (tmp_path / "CODE_RAN").exists()
    # a class of the script that saved it (pickled as __main__.Net): code, not damage
    script = "import torch\nclass Net:\n    pass\ntorch.save({'net': Net()}, 'script.ckpt')\n"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    with pytest.raises(FacesError, match=r"holds pickled Python objects \(__main__.Net\)"):
        load_checkpoint(tmp_path / "script.ckpt")
    bare = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), bare)  # loadable, but not a checkpoint
    with pytest.raises(FacesError, match="holds a Tensor, not a checkpoint's dictionary"):
        load_checkpoint(bare)


def test_text_cut_inside_a_character_at_the_first_bytes_is_still_text(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("x" * 63 + "é and more", encoding="utf-8")  # the 64th byte is half of é
    with pytest.raises(FacesError, match="is a text file, not a PyTorch checkpoint"):
        load_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch CODE_RAN",))


@pytest.fixture(scope="session")
def classifier_checkpoint(tmp_path_factory) -> Path:
    """An attribute classifier trained one step through the CLI (what `serve --classifier` takes)."""
    root = tmp_path_factory.mktemp("classifier")
    args = [
        "fit", "--config", str(REPO / "configs" / "attribute_classifier_quickstart.yaml"),
        "--data.image_size", "16", "--data.num_images", "64", "--data.num_val_images", "16",
        "--data.batch_size", "8", "--model.width", "4", "--trainer.max_steps", "1",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    result = run_cli(args, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "runs" / "attribute_classifier_quickstart" / "version_0" / "checkpoints" / "last.ckpt"


def commands_given(path: Path, checkpoints: dict[str, Path], folder: Path) -> dict[str, list[str]]:
    """Every command that reads a GAN checkpoint, given ``path`` in its place."""
    return {
        "fit --ckpt_path": ["fit", *PLAY_TINY, "--ckpt_path", str(path)],
        "predict --ckpt_path": ["predict", *PLAY_TINY, "--ckpt_path", str(path)],
        "generate": ["generate", str(path), "--out", str(folder / "out")],
        "interpolate": ["interpolate", str(path), "--seeds", "1", "2", "--out", str(folder / "walk.gif")],
        "export": ["export", str(path), str(folder / "export")],
        "serve": ["serve", str(path), "--port", str(free_port())],
        "fid": ["fid", str(path), str(folder / "faces")],
    }


@pytest.fixture
def no_inception(monkeypatch):
    """fid without Inception weights (none here, and nothing downloads in tests)."""
    import lightning_faces.tools as tools
    from lightning_faces.metrics import make_fid
    from tests.test_metrics import TinyFeatures

    monkeypatch.setattr(tools, "check_inception_weights", lambda path, option: None)
    monkeypatch.setattr(tools, "make_fid", lambda weights, resize: make_fid(feature_extractor=TinyFeatures()))


def face_folder(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        face_like_image(index, 24, 24).save(folder / f"{index}.png")
    return folder


@pytest.mark.parametrize("kind", ["text", "classifier"])
def test_every_command_that_reads_a_gan_checkpoint_names_a_wrong_file_in_one_line(
    tmp_path, capsys, monkeypatch, checkpoints, classifier_checkpoint, no_inception, kind
):
    monkeypatch.chdir(tmp_path)
    face_folder(tmp_path / "faces")
    if kind == "text":
        path, expected = tmp_path / "hello.ckpt", "is a text file, not a PyTorch checkpoint"
        path.write_text("hello world\n")
    else:
        path, expected = classifier_checkpoint, "is an attribute classifier's, not a GAN's"
    for command, args in commands_given(path, checkpoints, tmp_path).items():
        line = one_line_error(capsys, args)
        assert str(path) in line and expected in line, (command, line)
        if kind == "classifier":
            assert "serve GENERATOR --classifier" in line, (command, line)  # says where a classifier fits
    assert not [p for p in tmp_path.iterdir() if p.name not in ("faces", "hello.ckpt")]  # nothing written


def test_serve_classifier_option_names_a_wrong_file_in_one_line(tmp_path, capsys, checkpoints):
    text = tmp_path / "hello.ckpt"
    text.write_text("hello world\n")
    plain = str(checkpoints["plain"])
    for given, expected in (
        (text, "is a text file, not a PyTorch checkpoint"),
        (plain, "is a GAN's, not an attribute"),
    ):
        line = one_line_error(capsys, ["serve", plain, "--classifier", str(given), "--port", str(free_port())])
        assert str(given) in line and expected in line


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys, checkpoints):
    plain = str(checkpoints["plain"])
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    cases = [
        (["generate", plain, "--out", str(a_file)], f"--out {a_file} is a file, but a folder is written there"),
        (["generate", plain, "--out", str(a_file / "sub")], f"is under {a_file}, which is a file"),
        (["interpolate", plain, "--seeds", "1", "2", "--out", str(a_folder)], f"--out {a_folder} is a folder"),
        (["interpolate", plain, "--seeds", "1", "2", "--out", str(a_file / "w.gif")], "which is a file, not a folder"),
        (["export", plain, str(a_file)], f"{a_file} is a file, but a folder is written there"),
        (["export", plain, str(a_file / "sub" / "deeper")], f"is under {a_file}, which is a file"),
    ]
    for args, expected in cases:
        assert expected in one_line_error(capsys, args), args
    assert a_file.read_text() == "keep me" and list(a_folder.iterdir()) == []


def test_seeds_outside_64_bit_integers_are_one_line_with_the_range(tmp_path, capsys, checkpoints):
    plain, out = str(checkpoints["plain"]), str(tmp_path / "out")
    for args in (
        ["generate", plain, "--seed", str(2**63), "--out", out],
        ["generate", plain, "--seed", str(2**70), "--out", out],
        ["generate", plain, "--seed", "-1", "--out", out],
        ["interpolate", plain, "--seeds", "0", str(2**63), "--out", str(tmp_path / "w.gif")],
    ):
        assert "must be in [0, 2**63 - 1]" in one_line_error(capsys, args)
    line = one_line_error(capsys, ["generate", plain, "--seed", str(2**63 - 1), "--num", "2", "--out", out])
    assert "goes past the largest seed" in line
    main(["generate", plain, "--seed", str(2**63 - 1), "--num", "1", "--out", out])  # the largest seed renders
    assert [p.name for p in Path(out).iterdir()] == [f"seed{2**63 - 1:06d}.png"]


def test_serve_on_a_port_in_use_names_the_port_and_the_option(tmp_path, capsys, checkpoints):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, ["serve", str(checkpoints["plain"]), "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line
    line = one_line_error(capsys, ["serve", str(checkpoints["plain"]), "--host", "203.0.113.7"])  # TEST-NET-3
    assert "cannot listen on 203.0.113.7 port 7860" in line and "in use" not in line


def test_inception_weights_that_are_another_file_are_one_line(tmp_path, capsys, checkpoints):
    face_folder(tmp_path / "faces")
    gan = str(checkpoints["plain"])
    line = one_line_error(capsys, ["fid", str(tmp_path / "faces"), str(tmp_path / "faces"), "--weights", gan])
    assert f"--weights {gan} is not Inception weights (it is a training checkpoint" in line
    text = tmp_path / "weights.pth"
    text.write_text("hello world\n")
    line = one_line_error(capsys, ["fid", str(tmp_path / "faces"), str(tmp_path / "faces"), "--weights", str(text)])
    assert f"{text} is a text file, not a PyTorch checkpoint" in line and "--weights PATH" in line
    key = "--fid.feature_extractor_weights_path"
    args = ["fit", *PLAY_TINY, "--fid.every_n_steps", "2", key, gan, "--trainer.logger.init_args.save_dir", "r"]
    line = one_line_error(capsys, args)
    assert f"{key} {gan} is not Inception weights" in line


@pytest.mark.parametrize("count", ["-4", "0"])
def test_predict_samples_below_one_is_one_line(tmp_path, capsys, monkeypatch, count):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["predict", *PLAY_TINY, "--data.predict_samples", count])
    assert f"predict_samples must be at least 1 (the images predict writes), got {count}" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--data.batch_size", "sixty"], "data.batch_size: expected int, got 'sixty' (in lightning_faces.data."),
        (["--model.generator.init_args.width", "abc"], "model.generator.init_args.width: expected int, got 'abc'"),
        (["--data.crop", "nan"], "data.crop: expected float, got 'nan'"),
        (["--model.ema_decay", "x"], "model.ema_decay: expected float or None, got 'x' (in lightning_faces.GAN)"),
        (["--trainer.max_steps", "ten"], "trainer.max_steps: expected int, got 'ten'"),
    ],
)
def test_a_value_of_the_wrong_type_says_the_key_the_type_and_the_value(tmp_path, capsys, override, expected):
    args = ["fit", "--config", str(REPO / "configs" / "dcgan.yaml"), "--data.data_dir", str(tmp_path), *override]
    assert expected in one_line_error(capsys, args)


OVERLAYS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.read_text().startswith("# Overlay"))


def test_the_shipped_overlays_are_known():
    assert {p.name for p in OVERLAYS} >= {"conditional.yaml", "ema.yaml", "diffaugment.yaml", "wandb.yaml"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_an_overlay_run_alone_says_which_config_goes_before_it(tmp_path, capsys, monkeypatch, overlay):
    monkeypatch.chdir(REPO)
    relative = overlay.relative_to(REPO)
    line = one_line_error(capsys, ["fit", "--config", str(relative), "--data.data_dir", str(tmp_path)])
    assert f"{relative} is an overlay" in line and f"--config {relative}" in line
    before = line.split("e.g. ")[1].split(" --config ")[1:-1] or [line.split("e.g. --config ")[1].split()[0]]
    assert before and all((REPO / name).is_file() for name in before), line
    suggested = line.split("e.g. ")[1].split()
    with pytest.raises(SystemExit) as exit_info:  # the configs it suggests parse together
        main(["fit", *suggested, "--data.data_dir", str(tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    capsys.readouterr()
    if overlay.name == "conditional.yaml":
        assert "--config configs/dcgan.yaml --config configs/ema.yaml --config configs/conditional.yaml" in line


def test_an_overlay_after_a_complete_config_is_not_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    for first in ("--config", "-c"):
        args = ["fit", first, "configs/dcgan.yaml", "--config", "configs/ema.yaml", "--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--data.data_dir", str(tmp_path)])
        assert exit_info.value.code == 0 and "ema_decay: 0.999" in capsys.readouterr().out
    assert "configs/ema.yaml is an overlay" in one_line_error(capsys, ["fit", "-c", "configs/ema.yaml"])


def test_fid_checks_both_sources_before_any_inception_pass(tmp_path, capsys, monkeypatch, no_inception):
    import lightning_faces.tools as tools
    from lightning_faces.metrics import make_fid
    from tests.test_metrics import TinyFeatures

    seen = []

    class Counting(TinyFeatures):
        def forward(self, images):
            seen.append(len(images))
            return super().forward(images)

    monkeypatch.setattr(tools, "make_fid", lambda weights, resize: make_fid(feature_extractor=Counting()))
    good = face_folder(tmp_path / "good")
    one = face_folder(tmp_path / "one", count=1)
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    cases = [
        ([str(good), str(tmp_path / "missing")], "missing does not exist"),
        ([str(good), str(one)], f"{one} holds 1 image: FID needs at least 2"),
        ([str(good), str(text)], f"{text} is a text file, not a PyTorch checkpoint"),
    ]
    for sources, expected in cases:
        assert expected in one_line_error(capsys, ["fid", *sources, "--image-size", "16"])
        assert seen == [], "Inception ran before the second source was checked"


def start_that_fails(case: str, tmp_path: Path, data: Path) -> tuple[list[str], int, str]:
    """Arguments for a fit whose start fails in ``case``, the exit status and the message expected."""
    from tests.conftest import celeba_args

    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    text = tmp_path / "weights.pth"
    text.write_text("hello world\n")
    args = {
        "missing data folder": (["--data.data_dir", str(tmp_path / "nowhere")], 2, "CelebA not found"),
        "empty data folder": (["--data.data_dir", str(empty)], 2, "CelebA"),
        "unreadable image": ([], 2, "cannot read image"),
        "batch larger than the dataset": (["--data.batch_size", "100"], 2, "is larger than the training set"),
        "unreadable FID weights": (
            ["--fid.every_n_steps", "2", "--fid.feature_extractor_weights_path", str(text)],
            2,
            "is a text file",
        ),
        "missing classifier": (
            [
                "--config",
                str(REPO / "configs" / "conditional.yaml"),
                "--trainer.logger.init_args.save_dir",
                str(runs),
                "--trainer.callbacks.classifier_path",
                str(tmp_path / "judge.ckpt"),
            ],
            2,
            "attribute classifier",
        ),  # fmt: skip
        "SIGTERM during setup": (
            ["--data.class_path", "tests.probes.SignalDuringSetup"],
            143,
            "SIGTERM before training",
        ),
    }[case]
    extra, status, message = args
    return ["fit", *celeba_args(data, runs), *extra], status, message


STARTS_THAT_FAIL = [
    "missing data folder",
    "empty data folder",
    "unreadable image",
    "batch larger than the dataset",
    "unreadable FID weights",
    "missing classifier",
    "SIGTERM during setup",
]


@pytest.mark.parametrize("case", STARTS_THAT_FAIL)
def test_a_start_that_fails_leaves_no_run_folder(tmp_path, capsys, monkeypatch, fake_celeba, case):
    monkeypatch.chdir(tmp_path)
    if case == "unreadable image":
        next((fake_celeba / "celeba" / "img_align_celeba").iterdir()).write_bytes(b"not a jpeg")
    args, status, message = start_that_fails(case, tmp_path, fake_celeba)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == status and message in err, err[-3000:]
    assert "Traceback" not in err
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("version_*")) == []


def test_after_a_failed_start_the_next_run_takes_the_first_version(tmp_path, capsys, fake_celeba):
    from tests.conftest import celeba_args

    runs = tmp_path / "runs"
    with pytest.raises(SystemExit):
        main(["fit", *celeba_args(fake_celeba, runs), "--data.batch_size", "100"])
    main(["fit", *celeba_args(fake_celeba, runs), "--trainer.max_steps", "1"])
    assert [p.name for p in (runs / "dcgan").iterdir()] == ["version_0"]
    assert (runs / "dcgan" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_a_second_ctrl_c_stops_at_once_with_exit_status_130_and_one_line(tmp_path, fake_celeba):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import celeba_args

    runs, marker = tmp_path / "runs", tmp_path / "holding"
    hold = ["--trainer.callbacks+=tests.probes.HoldAt", "--trainer.callbacks.step=3"]
    hold += [f"--trainer.callbacks.marker={marker}", f"--trainer.callbacks.release={tmp_path / 'never'}"]
    args = ["fit", *celeba_args(fake_celeba, runs), "--trainer.max_steps", "100", *hold]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_faces", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    for _ in range(600):  # held inside iteration 3's end: the first Ctrl-C cannot finish it
        if marker.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first is handled (a flag) before the second comes
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "stopped: a second Ctrl-C: stopped at once (this iteration not saved)" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and "Detected KeyboardInterrupt" not in err
    assert list(runs.rglob("*.ckpt")) == []  # at once: nothing saved
