"""Checkpoint files: written atomically, read without unpickling arbitrary code."""

from __future__ import annotations

import codecs
import errno
import importlib
import pickle
import pickletools
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.files import atomic_path
from lightning_faces.growth import Growth
from lightning_faces.schedules import Cosine


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


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", role: str = "checkpoint", advice: str | None = None
) -> dict[str, Any]:
    """Reads a Lightning checkpoint holding only tensors and plain data; explains any refusal.

    Whatever is wrong is one FacesError naming the file and what it is: missing, empty, another
    kind of file (text, an image, safetensors...), damaged, or holding pickled code. ``role``
    names the file in messages ("checkpoint"); ``advice`` replaces what they tell the user to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FacesError(f"{role} {path} does not exist (or is not a file){': ' + advice if advice else ''}")
    if path.stat().st_size == 0:
        raise FacesError(f"{role} {path} is empty (0 bytes): {advice or 'use an earlier checkpoint of the run'}")
    try:
        with path.open("rb") as file:
            head = file.read(64)
    except OSError as error:
        raise FacesError(
            f"{role} {path} cannot be read ({error.strerror}): {advice or 'check its permissions'}"
        ) from error
    kind = file_kind(head, path)
    if kind is not None:
        raise FacesError(
            f"{role} {path} is {kind}, not a PyTorch checkpoint: "
            + (advice or "pass a .ckpt file that a lightning_faces run wrote (runs/<name>/version_N/checkpoints/)")
        )
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        code = _pickled_code(str(error)) or (_pickle_globals(path) if head.startswith(b"\x80") else None)
        if code is not None:
            raise FacesError(
                f"{role} {path} holds pickled Python objects ({code}) beyond tensors and plain data, which could run "
                f"code when loaded, so it was not loaded: {advice or 'use checkpoints that lightning_faces wrote'}"
            ) from error
        raise _damaged(path, error, role, advice) from error
    except Exception as error:  # noqa: BLE001 - torch's readers fail in many ways on a damaged file
        raise _damaged(path, error, role, advice) from error
    if not isinstance(loaded, dict):  # torch.save of a bare tensor or list: not a checkpoint
        raise FacesError(
            f"{role} {path} holds a {type(loaded).__name__}, not a checkpoint's dictionary: "
            + (advice or "pass a .ckpt file that a lightning_faces run wrote (runs/<name>/version_N/checkpoints/)")
        )
    return loaded


def _damaged(path: Path, error: BaseException, role: str, advice: str | None) -> FacesError:
    text = str(error)
    reason = re.search(r"(?:WeightsUnpickler error|enforce fail[^\]]*\]) *:? *([^\n]+?)(?:\.|$)", text)
    reason_text = (reason.group(1) if reason else text.split(". ")[0]).strip() or type(error).__name__
    return FacesError(
        f"{role} {path} is damaged (cut short or corrupted: {type(error).__name__}: {reason_text[:120]}): "
        f"{advice or 'use an earlier checkpoint of the run'}"
    )


def _pickled_code(message: str) -> str | None:
    """The class or function a refused pickle names, unless it is a name cut short by a truncated
    file: the start of a name its (loaded) module has, such as ``torch._utils._rebuild_tens``.
    A class from the saving script (``__main__.Net``) is code. Nothing is imported to decide."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found is None:
        return None
    module_name, _, name = found.group(1).rpartition(".")
    module = sys.modules.get(module_name)
    cut_short = module is not None and not hasattr(module, name) and any(n.startswith(name) for n in dir(module))
    return None if cut_short else found.group(1)


def _pickle_globals(path: Path) -> str | None:
    """The first class or function a plain pickle file names (None when it names none), read
    opcode by opcode with pickletools, which runs nothing: torch's reader stops at a pickle
    protocol it does not know before it reaches the name."""
    strings: list[str] = []
    try:
        with path.open("rb") as file:
            for opcode, argument, _ in pickletools.genops(file):
                if opcode.name == "GLOBAL":
                    return str(argument).replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # noqa: BLE001 - damaged: whatever was read before is all there is
        return None
    return None


def file_kind(head: bytes, path: Path) -> str | None:
    """What a file is, from its first bytes, when it is plainly not a PyTorch checkpoint (None:
    it may be one, a zip archive or a pickle, as ``torch.save`` writes)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None  # torch.save's zip format, or its legacy pickle
    for magic, name in (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"\x93NUMPY", "a NumPy array file"),
        (b"\x1f\x8b", "a gzip archive"),
    ):
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if len(head) > 10 and head[8:10] == b'{"':
        return "a safetensors file (an export's weights: give the export's folder instead)"
    try:  # incremental: the 64 bytes may end inside a character
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            return "a JSON or text file"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "a YAML file"
        return "a text file"
    return "a file of unknown content"


# what a checkpoint's settings may name as a class: this package's networks, objectives,
# regularizers and augmentation. Anything else is refused, as pickled code is: the settings of
# a checkpoint from elsewhere must not choose which code runs.
BUILDABLE = tuple(
    f"lightning_faces.{name}." for name in ("nets", "objectives", "regularizers", "augment", "growth", "schedules")
)


def gan_settings(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``GAN(...)`` settings a checkpoint was trained with (LightningCLI's own entries left out).

    Raises FacesError for checkpoints from before networks were injected (lightning_faces 0.1,
    with ``g_width``/``d_width`` settings), which this version cannot rebuild.
    """
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    settings = {k: v for k, v in hyper_parameters.items() if not k.startswith("_")}
    if is_classifier(hyper_parameters):
        raise FacesError(
            f"checkpoint {path} is an attribute classifier's, not a GAN's: it judges faces (use it with "
            "`serve GENERATOR --classifier` or AttributeAccuracy's classifier_path); pass a GAN checkpoint here"
        )
    if settings and "generator" not in settings:
        raise FacesError(
            f"checkpoint {path} was written by lightning_faces 0.1 (networks set by g_width/d_width), whose "
            "settings this version cannot rebuild: train a new run, or sample from it with lightning_faces 0.1"
        )
    return settings


def is_classifier(hyper_parameters: dict[str, Any]) -> bool:
    """Whether a checkpoint's hyper-parameters are the attribute classifier's (classifier.py)."""
    class_path = str(hyper_parameters.get("_class_path", ""))
    if class_path:
        return class_path.endswith(".AttributeClassifier")
    return (
        "attributes" in hyper_parameters and "generator" not in hyper_parameters and "g_width" not in hyper_parameters
    )


def build(value: Any, path: str | Path) -> Any:
    """Instantiates ``{"class_path", "init_args"}`` settings (nested ones first) from this package."""
    if isinstance(value, list):
        return [build(item, path) for item in value]
    if not isinstance(value, dict) or "class_path" not in value:
        return value
    class_path = str(value["class_path"])
    if not class_path.startswith(BUILDABLE):
        raise FacesError(
            f"checkpoint {path} names {class_path}, which is not a lightning_faces network, objective, "
            "regularizer or schedule, so it was not built: load its state_dict into networks you build yourself"
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


def describe_settings(hparams: dict[str, Any], generator: Any, discriminator: Any) -> None:
    """Makes ``GAN(...)``'s saved settings what a checkpoint can hold and ``GAN.from_checkpoint`` rebuild.

    Built by the CLI, ``hparams`` holds each network's and objective's config (class_path and
    init_args). Built in Python, it holds the objects themselves, which a safe checkpoint
    cannot carry: each becomes its class path (a ``Growth`` its settings too). The settings
    the CLI links from the data into the networks are filled in from the networks, so a
    checkpoint says what its networks were built for.
    """

    def describe(value: Any) -> Any:
        if isinstance(value, (Growth, Cosine)):  # plain settings: a checkpoint can hold and rebuild them
            return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args": value.settings()}
        if isinstance(value, nn.Module):  # its settings are the object's own business: only its class is known
            return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args_unknown": True}
        if isinstance(value, (list, tuple)):
            return [describe(item) for item in value]
        return value

    for key, value in list(hparams.items()):
        hparams[key] = describe(value)
    for name, net in (("generator", generator), ("discriminator", discriminator)):
        settings = hparams.get(name)
        if isinstance(settings, dict) and isinstance(settings.get("init_args"), dict):
            for key in ("image_size", "attributes"):
                if hasattr(net, key):
                    settings["init_args"][key] = getattr(net, key)


def built_settings(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``GAN(...)`` arguments a checkpoint read with ``load_checkpoint`` records, with its
    networks, objective and regularizers built (only this package's classes: ``build``)."""
    return {key: build(value, path) for key, value in gan_settings(checkpoint, path).items()}
