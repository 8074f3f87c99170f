"""What the machine computes fast, and the training precision chosen from it.

A CPU with bf16 arithmetic (AVX512-BF16 on AMD Zen 4 and later and Intel Cooper Lake and later,
AMX on Sapphire Rapids and later) trains the DCGAN in ``bf16-mixed`` at 2.30x the plain loop
against fp32's 1.41x, both channels-last (docs/benchmarks.md, "Speed"); one without it emulates
bf16, at 0.38x. So when
a config leaves ``trainer.precision`` unset, ``fit`` takes bf16-mixed on the first kind of CPU and
fp32 elsewhere, and says which. Any precision the config sets is kept.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CHOSEN = "bf16-mixed"


def cpu_model() -> str:
    """The CPU's marketing name (``AMD EPYC 9454``), as /proc/cpuinfo or the platform gives it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


# flag -> the name of PyTorch's query (torch.cpu._is_<name>_supported)
QUERIES = {"avx2": "avx2", "avx512": "avx512", "avx512_bf16": "avx512_bf16", "amx": "amx_tile"}
BF16 = {"avx512_bf16": "AVX512-BF16", "amx": "AMX"}


def cpu_flags() -> dict[str, bool]:
    """The instruction sets training speed depends on, as PyTorch's CPU backend sees them."""
    queries = {flag: getattr(torch.cpu, f"_is_{name}_supported", None) for flag, name in QUERIES.items()}
    return {flag: bool(query()) if query is not None else False for flag, query in queries.items()}


def describe_cpu() -> str:
    """``AMD EPYC 9454 (2 cores, AVX512-BF16)``: what a figure measured on this CPU is from."""
    flags = cpu_flags()
    bf16 = " + ".join(name for flag, name in BF16.items() if flags[flag]) or "no bf16 arithmetic"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} ({cores} cores, {bf16})"


def runs_on_cpu(accelerator: object) -> bool:
    """Whether a Trainer built with ``accelerator`` trains on the CPU."""
    if not isinstance(accelerator, str):
        return type(accelerator).__name__ == "CPUAccelerator"
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    return not (CUDAAccelerator.is_available() or MPSAccelerator.is_available())


def choose_precision(accelerator: object) -> tuple[str | None, str]:
    """The precision for a Trainer whose config leaves it unset, and why, in a few words.

    ``None`` leaves Lightning's default (32-true).
    """
    if not runs_on_cpu(accelerator):
        return None, "Lightning's default off the CPU"
    flags = cpu_flags()
    found = [name for flag, name in BF16.items() if flags[flag]]
    if found:
        return CHOSEN, f"this CPU has {' and '.join(found)}"
    return "32-true", "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX) and would emulate it"
