"""What the benchmarks share: the machine's description, tables, JSON, per-process memory."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lightning_faces.data import CelebADataModule
from lightning_faces.hardware import cpu_flags, cpu_model

REPO = Path(__file__).resolve().parents[1]


def repo_env() -> dict[str, str]:
    """The environment for a ``python -m lightning_faces`` child: this checkout first on the
    path (configs name benchmark callbacks), whatever PYTHONPATH already held after it."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of rows (dicts) in the given column order."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return "" if value is None else str(value)


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    return path


def memory_mib(pid: int) -> dict[str, float]:
    """Peak resident set (VmHWM), and its private (RssAnon) and file-backed (RssFile) parts, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def worker_pids() -> list[int]:
    """This process's live child processes (DataLoader workers)."""
    return [child.pid for child in multiprocessing.active_children() if child.pid is not None]


def sample_data(args: Any, prepared_dir: str | Path, **options: Any) -> CelebADataModule:
    """All of ``args.data_dir``'s CelebA images (no validation), prepared under prepared_dir."""
    settings = {"split": "all", "val_split": None, "image_size": args.image_size, "batch_size": args.batch_size}
    return CelebADataModule(data_dir=args.data_dir, prepared_dir=str(prepared_dir), **{**settings, **options})
