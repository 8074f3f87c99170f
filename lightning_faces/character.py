"""A character: one face as the page keeps it, and as ``generate --character`` renders it.

A character is made of genes, its latent (one number per entry) and its control values, plus the
truncation it is shown at. Controls are a conditional model's attributes (0 to 1), or, for an
unconditional model, offsets along latent directions (-3 to 3, in units of the latent's std):
the generator's principal directions ("direction 1", ...; ``directions.principal_directions``), and
the named ones an attribute classifier finds (``directions.latent_directions``).

``Character.genes()`` is the JSON the page's "Copy genes" button copies; ``Character.from_genes``
reads it back, refusing anything else in one line. Latents are kept as the shortest decimals
that give the same float32 values, so the JSON is short and renders the same pixels.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lightning_faces.errors import FacesError

EDIT_RANGE = 3.0  # latent-direction controls run from -3 to 3 (units of the latent's std)


def short(value: float) -> float:
    """``value`` as the shortest decimal with the same float32 value (0.12345679, not 0.1234567910432816)."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class Character:
    """What a face is made of.

    Attributes:
        latent: the latent, one gene per entry.
        controls: control values by name (attributes, or direction offsets), one gene each.
        seed: the seed it was drawn from; None for a mixed character.
        parents: the two parents' labels, for a mixed character.
        origin: for a mixed character, which parent gave each gene, "A" or "B", latent genes
            first, then controls in order; empty otherwise.
        truncation: the psi it is shown (and saved) at.
    """

    latent: tuple[float, ...]
    controls: dict[str, float]
    seed: int | None = None
    parents: tuple[str, ...] = ()
    origin: str = ""
    truncation: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent", tuple(short(v) for v in self.latent))

    def at(self, truncation: float) -> Character:
        return replace(self, truncation=float(truncation))

    def with_control(self, name: str, value: float) -> Character:
        return replace(self, controls={**self.controls, name: float(value)})

    def label(self) -> str:
        """A short name: "seed 12", or "mix of #1 x #2" (the parents' labels as the page gave them)."""
        return f"seed {self.seed}" if self.seed is not None else "mix of " + " x ".join(self.parents)

    def file_stem(self) -> str:
        """What the face's PNG is called, on the page's download and from ``generate --character``:
        seed000042-psi0.70, or mixed-psi1.00."""
        stem = f"seed{self.seed:06d}" if self.seed is not None else "mixed"
        return f"{stem}-psi{self.truncation:.2f}"

    def genes(self) -> str:
        """The character as JSON (what "Copy genes" copies; ``generate --character`` reads it)."""
        data: dict[str, Any] = {"seed": self.seed, "truncation": self.truncation, "controls": self.controls}
        if self.parents:
            data |= {"parents": list(self.parents), "origin": self.origin}
        data["latent"] = list(self.latent)
        return json.dumps(data)

    @classmethod
    def from_genes(
        cls,
        text: str,
        latent_dim: int,
        control_names: list[str],
        span: tuple[float, float] = (-EDIT_RANGE, EDIT_RANGE),
        source: str = "genes",
        hint: str = "",
    ) -> Character:
        """Reads ``genes()``'s JSON for a generator with ``latent_dim`` and ``control_names``,
        whose controls run over ``span``; one-line FacesError for anything that is not such a
        character (``hint`` ends the message about unknown controls)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise FacesError(
                f"{source} is not JSON ({error.msg}, line {error.lineno}): copy the page's genes"
            ) from error
        if not isinstance(data, dict) or not isinstance(data.get("latent"), list):
            raise FacesError(f"{source} has no latent: it is not a character's genes (copy them from the page)")
        latent, controls = data["latent"], data.get("controls") or {}
        if len(latent) != latent_dim:
            raise FacesError(f"{source} has a latent of {len(latent)} numbers; this generator takes {latent_dim}")
        if not all(_finite(v) and abs(v) < 1e6 for v in latent):
            raise FacesError(f"{source}: every latent entry must be a finite number (a latent's are about -4 to 4)")
        if not isinstance(controls, dict) or not all(_finite(v) for v in controls.values()):
            raise FacesError(f"{source}: controls must map names to numbers")
        unknown = sorted(set(controls) - set(control_names))
        if unknown:
            known = ", ".join(control_names) or "none"
            raise FacesError(f"{source} sets {', '.join(unknown)}, not among the generator's controls ({known}){hint}")
        outside = sorted(name for name, v in controls.items() if not span[0] <= v <= span[1])
        if outside:
            raise FacesError(f"{source} sets {', '.join(outside)} outside [{span[0]:g}, {span[1]:g}]")
        truncation = data.get("truncation", 1.0)
        if not _finite(truncation) or not 0.0 <= truncation <= 1.0:
            raise FacesError(f"{source}: truncation must be a number in [0, 1], got {truncation!r}")
        seed, parents, origin = data.get("seed"), data.get("parents") or [], data.get("origin") or ""
        if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            raise FacesError(f"{source}: seed must be a whole number from 0 (or null for a mix), got {seed!r}")
        if not (isinstance(parents, list) and all(isinstance(p, str) for p in parents)):
            raise FacesError(f"{source}: parents must be a list of labels")
        genes = latent_dim + len(control_names)
        if origin and not (isinstance(origin, str) and set(origin) <= {"A", "B"} and len(origin) == genes):
            raise FacesError(f"{source}: origin must be one letter, A or B, for each of the {genes} genes")
        return cls(
            tuple(float(v) for v in latent),
            {name: float(controls.get(name, 0.0)) for name in control_names},
            seed,
            tuple(parents),
            origin,
            float(truncation),
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mix(a: Character, b: Character, rng: random.Random, names: tuple[str, str] | None = None) -> Character:
    """A child of ``a`` and ``b``: each gene (latent entry, control value) copied from one parent
    chosen by a coin flip, never averaged; ``names`` label the parents (default: their labels).

    Never a copy of one parent where the parents' latents differ in two entries or more: flips that
    give every differing latent entry to one parent (1 in 128 with an 8-entry latent) are drawn again.
    """
    differ = [i for i, (x, y) in enumerate(zip(a.latent, b.latent, strict=True)) if x != y]
    while True:
        from_a = [rng.random() < 0.5 for _ in a.latent]
        if len(differ) < 2 or len({from_a[i] for i in differ}) == 2:
            break
    latent = tuple(x if take else y for x, y, take in zip(a.latent, b.latent, from_a, strict=True))
    control_from_a = {name: rng.random() < 0.5 for name in a.controls}
    controls = {name: a.controls[name] if take else b.controls[name] for name, take in control_from_a.items()}
    origin = "".join("A" if take else "B" for take in [*from_a, *control_from_a.values()])
    parents = names or (a.label(), b.label())
    return Character(latent, controls, None, tuple(parents), origin, a.truncation)


def render(generator: Any, character: Character, directions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (3, S, S): the character's face. A conditional generator takes its controls as
    attributes; an unconditional one moves its latent along ``directions`` by its controls."""
    latent = torch.tensor(character.latent, dtype=torch.float32)[None]
    if generator.attributes:
        row = torch.tensor([character.controls[name] for name in generator.attributes], dtype=torch.float32)[None]
        return generator.render(latent, row, character.truncation)[0]
    directions = directions or {}
    for name, value in character.controls.items():
        latent = latent + value * directions[name].to(latent)[None]
    return generator.render(latent, None, character.truncation)[0]


__all__ = ["EDIT_RANGE", "Character", "mix", "render", "short"]
