"""The training precision ``fit`` chooses from the CPU when the config leaves it unset (issue 26).

This machine may or may not have bf16 arithmetic: the tests fake PyTorch's capability queries.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from lightning_faces import hardware
from lightning_faces.cli import main
from tests.conftest import PLAY_TINY


@pytest.fixture
def cpu(monkeypatch):
    """Sets which bf16 arithmetic the CPU reports: ``cpu(avx512_bf16=True)``."""

    def report(avx512_bf16: bool = False, amx: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return report


def fit_precision(tmp_path, capsys, *extra: str) -> tuple[str, str]:
    """Trains PLAY_TINY's 4 iterations in this process; the precision it trained in, and stderr."""
    record = tmp_path / "precision.txt"
    cpu = ["--trainer.accelerator", "cpu"]  # the choice is the CPU's, whatever else the machine has
    args = ["fit", *PLAY_TINY, *cpu, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]
    main([*args, "--trainer.callbacks+=tests.probes.RecordPrecision", "--trainer.callbacks.path", str(record)])
    return record.read_text(), capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "chosen", "why"),
    [
        ({"avx512_bf16": True}, "bf16-mixed", "this CPU has AVX512-BF16"),
        ({"amx": True}, "bf16-mixed", "this CPU has AMX"),
        ({}, "32-true", "this CPU has no bf16 arithmetic"),
    ],
)
def test_fit_trains_in_bf16_on_a_cpu_with_bf16_arithmetic_and_says_why(tmp_path, capsys, cpu, flags, chosen, why):
    cpu(**flags)
    precision, err = fit_precision(tmp_path, capsys)
    assert precision == chosen
    saved = next((tmp_path / "runs").rglob("config.yaml")).read_text()
    assert f"precision: {chosen}" in saved  # the run folder says what it trained in
    said = [line for line in err.splitlines() if line.startswith("trainer.precision")]
    assert len(said) == 1 and said[0].startswith(f"trainer.precision {chosen}: {why}"), err[-2000:]
    assert said[0].endswith("(set trainer.precision to choose)")


@pytest.mark.parametrize("setting", ["32-true", "bf16-mixed"])
def test_a_precision_the_config_sets_wins_silently(tmp_path, capsys, cpu, setting):
    cpu(avx512_bf16=setting == "32-true")  # the choice would differ from the setting
    precision, err = fit_precision(tmp_path, capsys, "--trainer.precision", setting)
    assert precision == setting
    assert "trainer.precision" not in err


def test_no_choice_off_the_cpu(monkeypatch, cpu):
    cpu(avx512_bf16=True)
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))
    assert hardware.choose_precision("cpu")[0] == "bf16-mixed"
    assert hardware.choose_precision("gpu") == (None, "Lightning's default off the CPU")
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    assert hardware.choose_precision("auto")[0] == "bf16-mixed"  # auto on a machine without a GPU: the CPU
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    assert hardware.choose_precision("auto")[0] is None


def test_cpu_flags_name_the_bf16_arithmetic(cpu):
    cpu(amx=True)
    flags = hardware.cpu_flags()
    assert flags["amx"] and not flags["avx512_bf16"]
    assert set(flags) == {"avx2", "avx512", "avx512_bf16", "amx"}
    assert hardware.describe_cpu().endswith("cores, AMX)")
