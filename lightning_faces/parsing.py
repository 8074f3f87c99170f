"""The command line's parsers: one error format for every command, and the tree of commands.

``python -m lightning_faces`` has training commands (``fit``, ``validate``, ``test``,
``predict``: LightningCLI's, and ``prepare``, which reads the same config) and tools (``fid``,
``download-weights``, ``generate``, ``interpolate``, ``export``, ``serve``: functions of their
own arguments). ``command_tree`` lists them all, from ``TRAINING`` and the tools' own parsers;
every parser is a ``ShortErrorParser``, so a bad argument is one ``error:`` line wherever it is.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

TRAINING = {
    "fit": "Train a GAN (or the attribute classifier) from a config (run: fit --help).",
    "validate": "D's view of held-out real images against fakes, from a checkpoint (run: validate --help).",
    "test": "The same on the test split (run: test --help).",
    "predict": "Generate images from a checkpoint into the run folder (run: predict --help).",
    "prepare": "Decode the config's data once into prepared arrays (run: prepare --config C).",
}


class ShortErrorParser(LightningArgumentParser):
    """Says what was wrong in one line (and where --help is) instead of 80 lines of usage first."""

    def print_usage(self, file: Any = None) -> None:
        pass

    def error(self, message: str, *args: Any, **kwargs: Any) -> Any:
        if self.exit_on_error:  # the parser that prints; nested ones pass their whole text up to it
            message = short_error(message)
        return super().error(message, *args, **kwargs)


def short_error(message: str) -> str:
    """jsonargparse's error, often a tree of every type a value was tried against, as one line.

    A bad value under a class (``--data.batch_size sixty``, ``--model.generator.init_args.width
    abc``) becomes its full key, the type expected, the value given and the class:
    ``data.batch_size: expected int, got 'sixty' (in lightning_faces.data.CelebADataModule)``.
    """
    # a check inside an argument link (e.g. an unknown attribute name) says what it checked
    linked = re.match(r"Call to compute_fn of link .*? failed: (.*)", message, flags=re.DOTALL)
    if linked:
        return linked.group(1)
    lines = message.splitlines()
    keys: list[str] = []
    class_path, depth, deepest = None, -1, 0
    for index, line in enumerate(lines):
        indent = len(line) - len(line.lstrip(" -"))
        key = re.match(r'\s*(?:- )?Parser key "([^"]+)"', line)
        given = re.match(r"\s*(?:- )?Problem with given class_path '([^']+)':", line)
        if key and indent > depth:
            keys.append(key.group(1))
            depth, deepest = indent, index
        elif given and indent > depth:
            class_path, depth = given.group(1), indent
            # under a top-level class (data, model) LightningCLI takes keys without init_args
            keys.append("" if keys in (["data"], ["model"]) else "init_args")
    reason_lines = [line for line in lines[deepest + 1 :] if len(line) - len(line.lstrip(" -")) > depth]
    expected = [_type_name(t) for t in re.findall(r"Expected a <class '([^']+)'>", "\n".join(reason_lines))]
    value = re.search(r"Got value: (.*)|Given value: (.*)", "\n".join(reason_lines))
    where = f" (in {class_path})" if class_path else ""
    key_text = ".".join(part for part in keys if part)
    if expected and value:
        got = next(group for group in value.groups() if group is not None)
        return f"{key_text}: expected {' or '.join(dict.fromkeys(expected))}, got {got!r}{where}"
    if class_path and reason_lines:  # another reason under a class (an unknown key, say): said as it is
        reason = " ".join(line.strip(" -") for line in reason_lines)
        return f"{key_text}: {reason}{where}"
    return message


def _type_name(name: str) -> str:
    return "None" if name == "NoneType" else name.rsplit(".", 1)[-1]


def at_least(minimum: int) -> Callable[[str], int]:
    """An argument type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return named(parse, "int")


def named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """``parse`` as an argument type that ``--help`` shows as ``type: name``."""
    return _Named(parse, name)


class _Named:
    def __init__(self, parse: Callable[[str], Any], name: str) -> None:
        self.parse, self.__name__ = parse, name

    def __call__(self, text: str) -> Any:
        return self.parse(text)

    def __repr__(self) -> str:
        return self.__name__


class Commands:
    """Adds each command's parser to a tree: ``add_parser(name, help=..., description=...)``."""

    def __init__(self, prog: str, subcommands: Any) -> None:
        self.prog, self.subcommands = prog, subcommands

    def add_parser(self, name: str, help: str, description: str | None = None, **_: Any) -> ShortErrorParser:
        parser = ShortErrorParser(prog=f"{self.prog} {name}", description=description or help)
        self.subcommands.add_subcommand(name, parser, help=help)
        return parser
