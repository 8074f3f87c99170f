"""What G takes, drawn reproducibly: a seed's latent and attributes, a training iteration's latents.

A seed gives the same face in every command: ``generate``, ``interpolate``, ``serve`` and
``predict`` all go through ``seed_genes``. Training draws its latents from ``(seed, iteration,
slot)`` (``training_latents``), so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_faces.data.attributes import switch_on
from lightning_faces.errors import FacesError


def training_latents(
    seed: int, iteration: int, slot: int, count: int, latent_dim: int, world: int, rank: int, device: Any = "cpu"
) -> torch.Tensor:
    """Rank ``rank``'s ``count`` latents of an iteration's global batch, for one use (slot).

    The global batch (``count x world``) is drawn from ``(seed, iteration, slot)`` and rank r
    takes rows ``r*count`` to ``(r+1)*count``: ranks never share latents, and a resumed run
    draws what the uninterrupted one would have.
    """
    key = np.random.SeedSequence([seed, iteration, slot]).generate_state(1, np.uint64)[0]
    rng = torch.Generator(device=device).manual_seed(int(key))
    latents = torch.randn(world * count, latent_dim, device=device, generator=rng)
    return latents[rank * count : (rank + 1) * count]


def seed_genes(
    seeds: Sequence[int],
    latent_dim: int,
    names: Sequence[str],
    pool: torch.Tensor,
    values: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What faces ``seeds`` are made of: latents (B, latent_dim) and attributes (B, A), on the CPU.

    The one path from a seed to G's input, which ``generate``, ``interpolate``, ``serve`` and
    ``predict`` share: seed s seeds a CPU generator that draws the latent, then (conditional
    models) a row of ``pool``, real attribute rows of the training data. ``values`` then set
    attributes by name (``with_values``). Attributes are None for an unconditional model.
    """
    if not names and values:
        raise FacesError("this generator is unconditional: it takes no attribute values")
    latents, rows = [], []
    for seed in seeds:
        rng = torch.Generator().manual_seed(int(seed))
        latents.append(torch.randn(latent_dim, generator=rng))
        if names:
            rows.append(pool[int(torch.randint(len(pool), (1,), generator=rng))].cpu().float())
    if not names:
        return torch.stack(latents), None
    return torch.stack(latents), with_values(torch.stack(rows), names, values or {})


def with_values(rows: torch.Tensor, names: Sequence[str], values: dict[str, float]) -> torch.Tensor:
    """Attribute rows (B, A) with ``values`` set by name; an attribute switched on (0.5 or more)
    turns off those exclusive with it (another hair colour, say) unless ``values`` sets them too."""
    rows = rows.clone().float()
    for name, value in values.items():
        if value >= 0.5:
            rows = switch_on(rows, names, name)
    for name, value in values.items():
        rows[:, list(names).index(name)] = float(value)
    return rows
