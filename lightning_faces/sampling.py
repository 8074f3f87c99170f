"""What G takes, drawn reproducibly: a seed's latent and attributes, a training iteration's latents.

A seed gives the same face in every command: ``generate``, ``interpolate``, ``serve`` and
``predict`` all go through ``seed_genes``. Training draws its latents from ``(seed, iteration,
slot)`` (``training_latents``), so a resumed run draws what the uninterrupted one would have.
``Genes`` keeps, for one GAN, what these draw from: its fixed latents and, for a conditional
GAN, the pool of real attribute rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_faces.data.attributes import switch_on
from lightning_faces.distributed import world_and_rank
from lightning_faces.errors import FacesError

ATTRIBUTE_POOL_SIZE = 10_000  # real attribute rows a conditional GAN keeps to sample from


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


class Genes(nn.Module):
    """A GAN's inputs to G: N(0, I) latents and, when G is conditional, attribute rows.

    Attributes asked of G are always rows of real faces, never an impossible combination: in
    training the real batch's rows shuffled (``shuffled``), elsewhere rows of a pool drawn from
    the training data when fit starts (``fill_pool``), kept in checkpoints. Also keeps the fixed
    latents the sample grids render.

    Args:
        fixed_latents: (N, latent_dim), the latents of the grids of samples.
        names: the attributes G is conditioned on, in its order (empty: unconditional).
        seed: the run's seed; training latents and shuffles are drawn from it and the iteration.
    """

    def __init__(self, fixed_latents: torch.Tensor, names: Sequence[str] = (), seed: int = 0) -> None:
        super().__init__()
        self.latent_dim, self.names, self.seed = fixed_latents.shape[1], tuple(names), seed
        self.register_buffer("fixed_latents", fixed_latents)
        if self.names:
            self.register_buffer("attribute_pool", torch.zeros(ATTRIBUTE_POOL_SIZE, len(self.names)))

    @property
    def device(self) -> torch.device:
        return self.fixed_latents.device

    def labels(self, attributes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """A batch's attributes as the networks take them: None when unconditional."""
        return attributes.to(dtype) if self.names else None

    def for_iteration(self, count: int, iteration: int, slot: int) -> torch.Tensor:
        """This rank's ``count`` latents of the global batch of an iteration, for one use (slot)."""
        world, rank = world_and_rank()
        return training_latents(self.seed, iteration, slot, count, self.latent_dim, world, rank, self.device)

    def shuffled(self, labels: torch.Tensor | None, iteration: int, slot: int) -> torch.Tensor | None:
        """The attributes G is asked for in training: the real batch's rows in an order drawn
        from (seed, iteration, slot)."""
        if labels is None:
            return None
        key = np.random.SeedSequence([self.seed, iteration, slot, 1]).generate_state(1, np.uint64)[0]
        order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(int(key >> 1)))
        return labels[order.to(labels.device)]

    def latents(self, count: int, rng: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (count, latent_dim) on the GAN's device."""
        return torch.randn(count, self.latent_dim, device=self.device, generator=rng)

    def attributes(self, count: int, rng: torch.Generator | None = None) -> torch.Tensor | None:
        """``count`` rows (count, A) drawn from the pool; None when unconditional."""
        if not self.names:
            return None
        pool = self.attribute_pool
        return pool[torch.randint(len(pool), (count,), device=pool.device, generator=rng)]

    def sample(self, count: int, rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``count`` latents, then ``count`` attribute rows, both drawn from ``rng``."""
        return self.latents(count, rng), self.attributes(count, rng)

    def fixed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The grids' latents and their attributes (the pool's first rows)."""
        latents = self.fixed_latents
        return latents, self.attribute_pool[: len(latents)] if self.names else None

    def for_seeds(self, seeds: Sequence[int], values: dict[str, float] | None = None) -> tuple[torch.Tensor, Any]:
        """What ``seeds`` give in every command (``seed_genes``), on the CPU."""
        pool = self.attribute_pool if self.names else torch.zeros(0, 0)
        return seed_genes(seeds, self.latent_dim, self.names, pool, values)

    def fill_pool(self, data: Any) -> None:
        """Draws the pool from the training data (a datamodule with ``attributes`` and
        ``attribute_rows``); refuses data conditioned on other attributes, in one line."""
        if not self.names:
            return
        names = tuple(getattr(data, "attributes", ()))
        if names != self.names:
            raise FacesError(
                f"the GAN is conditioned on {list(self.names)} but data.attributes is {list(names)}: "
                "set data.attributes to the GAN's"
            )
        self.attribute_pool.copy_(data.attribute_rows(ATTRIBUTE_POOL_SIZE, self.seed))
