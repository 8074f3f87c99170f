"""Checkpoint files: written atomically, read without unpickling arbitrary code."""

from __future__ import annotations

import errno
import importlib
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


# what a checkpoint's settings may name as a class: this package's networks, objectives,
# regularizers and augmentation. Anything else is refused, as pickled code is: the settings of
# a checkpoint from elsewhere must not choose which code runs.
BUILDABLE = tuple(f"lightning_faces.{name}." for name in ("nets", "objectives", "regularizers", "augment", "growth"))


def gan_settings(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``GAN(...)`` settings a checkpoint was trained with (LightningCLI's own entries left out).

    Raises FacesError for checkpoints from before networks were injected (lightning_faces 0.1,
    with ``g_width``/``d_width`` settings), which this version cannot rebuild.
    """
    settings = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if settings and "generator" not in settings:
        raise FacesError(
            f"checkpoint {path} was written by lightning_faces 0.1 (networks set by g_width/d_width), whose "
            "settings this version cannot rebuild: train a new run, or sample from it with lightning_faces 0.1"
        )
    return settings


def build(value: Any, path: str | Path) -> Any:
    """Instantiates ``{"class_path", "init_args"}`` settings (nested ones first) from this package."""
    if isinstance(value, list):
        return [build(item, path) for item in value]
    if not isinstance(value, dict) or "class_path" not in value:
        return value
    class_path = str(value["class_path"])
    if not class_path.startswith(BUILDABLE):
        raise FacesError(
            f"checkpoint {path} names {class_path}, which is not a lightning_faces network, objective or "
            "regularizer, so it was not built: load its state_dict into networks you build yourself"
        )
    if value.get("init_args_unknown"):
        raise FacesError(
            f"checkpoint {path} does not record {class_path}'s settings (its GAN was built in Python, not "
            "from a config): build the GAN yourself and load the checkpoint's state_dict into it"
        )
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls(**{key: build(arg, path) for key, arg in (value.get("init_args") or {}).items()})


def generator_image_size(settings: dict[str, Any]) -> int | None:
    """The image size a checkpoint's generator was built for, when its settings record it."""
    generator = settings.get("generator")
    if isinstance(generator, dict):
        return (generator.get("init_args") or {}).get("image_size")
    return None
