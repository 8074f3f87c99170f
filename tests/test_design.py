"""How the package is built, checked where it is a promise: Lightning's private members touched
only where README says so, no import cycles, and the linter and formatter satisfied."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as lp

import lightning_faces

PACKAGE = Path(lightning_faces.__file__).parent
README = PACKAGE.parent / "README.md"

# Lightning's private members the package still reads, writes, calls or overrides, where no
# public way exists (README "Development" names each and why). The test fails when one is added,
# and when one listed here is no longer used (then take it out of README too).
LIGHTNING_PRIVATE = {
    "_last_global_step_saved",  # signals.py: a checkpoint saved on a signal counts as this iteration's
    "_save_last_checkpoint",  # signals.py: last.ckpt saved through the ModelCheckpoint that keeps it
    "_monitor_candidates",  # signals.py: what that save records
    "_get_next_version",  # loggers.py: a new run claims its version folder by creating it
    "_check_log_dir_exists",  # loggers.py: a resumed run appends to metrics.csv
    "_fs",  # loggers.py: the logger's file system, as Lightning's methods use it
    "_root_dir",  # loggers.py: the same
    "_experiment",  # loggers.py: the writer, made the appending one
}


def sources() -> dict[str, str]:
    return {str(path.relative_to(PACKAGE)): path.read_text() for path in PACKAGE.rglob("*.py")}


def lightning_private_names() -> set[str]:
    """Every ``_name`` that Lightning's Trainer, modules, callbacks, loops, CLI and strategies
    define or assign on ``self``."""
    names: set[str] = set()
    for path in Path(lp.__file__).parent.rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"self\.(_[a-z]\w*)", text))
        names.update(re.findall(r"def (_[a-z]\w*)\(self", text))
    return names


def test_lightnings_private_members_are_touched_only_where_readme_says():
    private = lightning_private_names()
    used = set()
    for text in sources().values():
        for node in ast.walk(ast.parse(text)):
            # obj._member (read, write or call) on another object than our own self/cls
            owner = node.value.id if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) else None
            if isinstance(node, ast.Attribute) and node.attr in private and owner not in ("self", "cls"):
                used.add(node.attr)
    used |= set(self_touched())
    assert used == LIGHTNING_PRIVATE, {
        "new (use a public API, or list it here and in README)": sorted(used - LIGHTNING_PRIVATE),
        "listed but no longer used": sorted(LIGHTNING_PRIVATE - used),
    }
    readme = README.read_text()
    assert all(f"`{name}`" in readme for name in LIGHTNING_PRIVATE), "README's Development section lists each"


def self_touched() -> list[str]:
    """Private names of Lightning's base classes that our subclasses use on ``self`` (read,
    write, call) or override: ``self._x`` in a class built on Lightning's (a LightningModule, a
    callback, the CLI, a logger) where ``_x`` is a name its Lightning bases use."""
    import importlib

    touched = []
    for name, text in sources().items():
        dotted = "lightning_faces." + name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        module = importlib.import_module(dotted)
        for node in ast.walk(ast.parse(text)):
            cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if not inspect.isclass(cls):
                continue
            bases = [base for base in cls.__mro__[1:] if (base.__module__ or "").startswith("lightning.")]
            theirs = set()
            for base in bases:
                source = inspect.getsource(base)
                theirs.update(re.findall(r"self\.(_[a-z]\w*)", source))
                theirs.update(re.findall(r"def (_[a-z]\w*)\(self", source))
            for sub in ast.walk(node):
                is_self = isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self"
                if is_self and sub.attr in theirs:
                    touched.append(sub.attr)
                if isinstance(sub, ast.FunctionDef) and sub.name in theirs:
                    touched.append(sub.name)  # an override of a private method
    return touched


def test_the_package_has_no_import_cycles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):  # deferred imports inside functions too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_faces"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
        # a package's own __init__ runs first anyway: importing it from inside is not a cycle
        graph[name] = {m for m in imported if m in modules and m != name and not name.startswith(m + ".")}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for other in sorted(graph[name]):
            if other in path:
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in done:
                visit(other, [*path, other])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles


def test_the_code_passes_the_linter_and_the_formatter():
    # ruff's settings are in pyproject.toml; a failure prints what to fix (`ruff check --fix .`,
    # `ruff format .`)
    root = PACKAGE.parent
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
