"""Checkpoint files: written atomically, read without unpickling arbitrary code."""

from __future__ import annotations

import errno
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_faces.errors import FacesError
from lightning_faces.files import atomic_path


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves through a temporary file and a rename, so a run killed mid-save (preemption, a full
    disk) leaves the previous checkpoint intact; loads with ``torch.load(weights_only=True)``,
    which refuses pickled code: checkpoints from elsewhere cannot run anything on load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as error:
            # torch's writer reports a full disk as "basic_ios::clear: iostream error"
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} was there"
            raise FacesError(f"cannot save checkpoint {path}: {write_failure(error, path.parent)}; {kept}") from error

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location)


def write_failure(error: BaseException, folder: Path) -> str:
    """Why a write into ``folder`` failed, in words a user can act on."""
    code = getattr(error, "errno", None)
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system: point the run somewhere writable"
    if code in (errno.EACCES, errno.EPERM):
        return f"{folder} is not writable (permission denied): point the run somewhere writable"
    if code in (errno.ENOSPC, errno.EDQUOT) or _nearly_full(folder):
        return f"the disk holding {folder} is full (or over quota): free some space"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'write failed'}"


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20  # less than a small checkpoint's worth
    except OSError:
        return False


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a Lightning checkpoint holding only tensors and plain data; explains any refusal."""
    path = Path(path)
    if not path.is_file():
        raise FacesError(f"checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise FacesError(f"checkpoint {path} is empty (0 bytes): use an earlier checkpoint of the run")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise FacesError(
            f"checkpoint {path} holds pickled Python objects{what} beyond tensors and plain data, which could "
            "run code when loaded, so it was not loaded: use checkpoints that lightning_faces wrote"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).split(". ")[0].strip() or type(error).__name__
        raise FacesError(
            f"checkpoint {path} is damaged or not a PyTorch checkpoint (truncated, or another kind of file: "
            f"{reason}): use an earlier checkpoint of the run"
        ) from error
