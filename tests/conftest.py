"""Fixtures: fake data in CelebA's own layout, written into tmp_path; never a download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_faces.data import CELEBA_ATTRIBUTES
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator

REPO = Path(__file__).resolve().parents[1]


def face_like_image(index: int, width: int = 44, height: int = 54) -> Image.Image:
    """A small image with structure (a bright disc on a gradient) that differs per index."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, np.full_like(x, 0.5, dtype=float)], -1) * 255
    cx, cy, r = width / 2 + rng.uniform(-4, 4), height / 2, width / 3
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    base[disc] = rng.uniform(120, 255, size=3)
    return Image.fromarray(base.astype(np.uint8))


def write_celeba(root: Path, splits: tuple[int, int, int] = (16, 4, 4), size: tuple[int, int] = (44, 54)) -> Path:
    """Writes a fake CelebA (images, partition, attributes) under root/celeba; returns root."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names, partition_lines, attribute_lines = [], [], []
    rng = np.random.default_rng(0)
    index = 0
    for split_id, count in enumerate(splits):
        for _ in range(count):
            index += 1
            name = f"{index:06d}.jpg"
            face_like_image(index, *size).save(folder / "img_align_celeba" / name, quality=95)
            names.append(name)
            partition_lines.append(f"{name} {split_id}")
            values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
            attribute_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
    (folder / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(attribute_lines) + "\n"
    )
    return root


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the test processes share the cores: each (and each run it starts)
    takes its share of threads, as OpenMP's busy-waiting threads slow everything down when more
    of them than cores are busy."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True, scope="session")
def private_cache_home(tmp_path_factory) -> None:
    """Prepared data and FID statistics go to a temporary cache, never the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))


@pytest.fixture
def fake_celeba(tmp_path: Path) -> Path:
    return write_celeba(tmp_path / "data")


def flags(values: dict[str, object]) -> list[str]:
    """{"--a": 1, "--b": "x"} -> ["--a", "1", "--b", "x"]"""
    return [str(item) for pair in values.items() for item in pair]


TINY_MODEL = flags(
    {
        "--model.generator.init_args.latent_dim": 8,
        "--model.generator.init_args.width": 4,
        "--model.discriminator.init_args.width": 4,
        "--model.num_fixed_samples": 4,
    }
)


def tiny_gan(g_norm: str = "batch", d_norm: str = "batch", feature_layer: int = -1, **kwargs: Any) -> GAN:
    """A DCGAN of 16px images, latent 8 and width 4: what the tests train in seconds."""
    generator = DCGANGenerator(latent_dim=8, width=4, image_size=16, norm=g_norm)
    discriminator = DCGANDiscriminator(width=4, image_size=16, norm=d_norm, feature_layer=feature_layer)
    return GAN(generator, discriminator, **{"num_fixed_samples": 4, **kwargs})


def celeba_args(data_dir: Path, run_dir: Path, batch_size: int = 4, config: str = "dcgan.yaml") -> list[str]:
    """Command-line overrides that turn a shipped config into a seconds-long CPU run."""
    overrides = {
        "--data.data_dir": data_dir,
        "--data.image_size": 16,
        "--data.batch_size": batch_size,
        "--data.num_workers": 0,
        "--trainer.accelerator": "cpu",
        "--trainer.logger.init_args.save_dir": run_dir,
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
        "--fid.every_n_epochs": 0,  # FID off unless a test turns it on (it needs weights)
        "--fid.every_n_steps": 0,
    }
    return ["--config", str(REPO / "configs" / config), *flags(overrides), *TINY_MODEL]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line_error(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """Runs the CLI in this process, expects exit status 2 and exactly one ``error:`` line at the
    start of a line (split on newlines only: a progress bar's carriage return must not hide it)
    and no traceback; returns that line."""
    from lightning_faces.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return lines[0]


def run_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``python -m lightning_faces ARGS`` as a user would, offline."""
    # PYTHONPATH: configs may name test helpers (a tiny FID feature network) by class_path
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "lightning_faces", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# generate, interpolate, export and serve (test_play.py, test_app.py)
PLAY_ATTRIBUTES = ["Black_Hair", "Blond_Hair", "Eyeglasses"]
PLAY_TINY = [
    "--config", str(REPO / "configs" / "quickstart.yaml"),
    "--data.image_size", "16", "--data.num_images", "64", "--data.num_val_images", "0", "--data.batch_size", "8",
    "--model.generator.init_args.latent_dim", "8", "--model.generator.init_args.width", "4",
    "--model.discriminator.init_args.width", "4", "--model.ema_decay", "0.9",
    "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A conditional and an unconditional quickstart, trained 4 iterations at 16 px through the CLI."""
    root = tmp_path_factory.mktemp("play")
    made = {}
    for name, extra in (("conditional", ["--data.attributes", f"[{', '.join(PLAY_ATTRIBUTES)}]"]), ("plain", [])):
        result = run_cli(["fit", *PLAY_TINY, *extra, "--trainer.logger.init_args.name", name], cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
        made[name] = root / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
    return made
