"""Atomic file writing: a reader sees the old file or the new one, never half of one.

Temporaries carry their writer's host and process id in their names (``owner_tag``), so a later
process can tell those of a writer that died (kill -9, a node lost) from those still being
written, and remove only the former (``remove_stale_temporaries``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
# ".last.ckpt.<host>-<pid>.<random>.tmp" (atomic_path) and "<name>.tmp-<host>-<pid>-<n>" (prepared folders)
_TEMPORARY = re.compile(
    r"^\..+\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.[^.]+\.tmp$|^.+\.tmp-(?P<dhost>[A-Za-z0-9]+)-(?P<dpid>\d+)-\d+$"
)
_cleaned: set[Path] = set()


def owner_tag() -> str:
    """``<host>-<pid>``: who writes a temporary."""
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes this package's temporaries in ``folder`` whose writer on this host is gone.

    Those of live processes, and of other hosts (a shared disk: their processes cannot be
    checked from here), are left alone. Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None:
            continue
        host, pid = match.group("host") or match.group("dhost"), int(match.group("pid") or match.group("dpid"))
        if host != _HOST or pid == os.getpid() or _alive(pid):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass  # another process cleaned it first
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent not in _cleaned:  # once per folder and process: what killed writers left
        remove_stale_temporaries(path.parent)
        _cleaned.add(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
