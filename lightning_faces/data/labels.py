"""Your own attribute labels for a folder of faces: a CSV beside the images.

The first line names the columns: the file column first, then one column per attribute, any
names (``file,Smiling,Eyeglasses,Age_Over_40``). Each following line is an image's path
relative to the folder (for a flat folder, its file name) and its values: 0 or 1, or a
fraction in [0, 1] for a soft label. Every image needs a row; rows naming no image are ignored.

    file,Smiling,Eyeglasses
    00001.png,1,0
    00002.png,0,1
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from lightning_faces.errors import FacesError

DEFAULT_NAME = "labels.csv"  # looked for beside the images when data.labels is not set


class Labels:
    """A labels CSV, read and checked once: its attribute names and a row per file.

    Raises FacesError, in one line naming the file and the line, for a file that cannot be read
    as labels.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel's byte-order mark
                lines = list(csv.reader(file))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise FacesError(f"cannot read the labels {self.path} ({error}): save it as a UTF-8 CSV") from error
        header = [cell.strip() for cell in lines[0]] if lines else []
        if len(header) < 2 or not all(header):
            raise FacesError(
                f"{self.path} line 1 must name the file column and then each attribute (file,Smiling,Eyeglasses), "
                f"got {','.join(header) or 'an empty file'}"
            )
        names = header[1:]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise FacesError(f"{self.path} line 1 names {', '.join(repeated)} more than once")
        self.names: tuple[str, ...] = tuple(names)
        self.rows: dict[str, torch.Tensor] = {}
        first_line: dict[str, int] = {}
        for number, cells in enumerate(lines[1:], start=2):
            if not any(cell.strip() for cell in cells):
                continue  # blank lines
            if len(cells) != len(header):
                raise FacesError(
                    f"{self.path} line {number} has {len(cells)} values for the {len(header)} columns of line 1"
                )
            file = cells[0].strip().replace("\\", "/")
            if file in first_line:
                raise FacesError(f"{self.path} line {number}: {file} has a row already (line {first_line[file]})")
            first_line[file] = number
            values = [self._value(cell, name, number) for cell, name in zip(cells[1:], names, strict=True)]
            self.rows[file] = torch.tensor(values)

    def _value(self, cell: str, name: str, line: int) -> float:
        try:
            value = float(cell)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise FacesError(f"{self.path} line {line}: {name} is {cell.strip()!r}; values are 0 or 1, or in [0, 1]")
        return value

    def for_files(self, files: list[str]) -> torch.Tensor:
        """The rows of ``files`` (paths relative to the folder), (N, A) float in [0, 1].

        Raises FacesError naming how many images have no row, and the first of them.
        """
        missing = [file for file in files if file not in self.rows]
        if missing:
            raise FacesError(
                f"{self.path} has no row for {len(missing)} of the {len(files)} images (first: {missing[0]}): "
                "add their rows, or move those images out of the folder"
            )
        if not files:
            return torch.zeros(0, len(self.names))
        return torch.stack([self.rows[file] for file in files])


def find_labels(folder: Path, labels: str | None) -> Path | None:
    """The labels CSV of an image folder: ``labels`` when set, else ``labels.csv`` beside the
    images when there is one; None for an unlabelled folder."""
    if labels is None:
        default = folder / DEFAULT_NAME
        return default if default.is_file() else None
    path = Path(labels).expanduser()
    if not path.is_file():
        raise FacesError(f"data.labels {path} is not a file: point it at the CSV of the images' labels")
    return path
