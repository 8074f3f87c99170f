"""How the GAN draws what G takes (latents, and a conditional model's attributes) and renders it.

Training draws latents from ``(seed, iteration, slot)`` (``training_latents``), so a resumed run
draws what the uninterrupted one would have; samples come from G's average in eval mode
(``Sampling.generate``); and a seed gives the same face in every command: ``generate``,
``interpolate``, ``serve`` and ``predict`` all go through ``seed_genes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_faces.data.attributes import switch_on
from lightning_faces.data.images import to_uint8
from lightning_faces.distributed import world_and_rank
from lightning_faces.errors import FacesError
from lightning_faces.growth import enlarge


class Sampling:
    """The GAN's sampling, a mixin of ``module.GAN``: it uses the GAN's ``generator``, ``ema``,
    ``attribute_names``, ``attribute_pool``, ``fixed_latents``, ``iteration`` and ``hparams.seed``."""

    def training_latents(self, count: int, slot: int) -> torch.Tensor:
        """This rank's ``count`` latents of the global batch for this iteration and use (slot)."""
        world, rank = world_and_rank()
        return training_latents(
            self.hparams.seed, self.iteration, slot, count, self.latent_dim, world, rank, self.device
        )

    def fake_attributes(self, real_labels: torch.Tensor | None, slot: int) -> torch.Tensor | None:
        """The attributes G is asked for in training: the real batch's rows in a random order
        drawn from (seed, iteration, slot), so never an impossible combination."""
        if real_labels is None:
            return None
        key = np.random.SeedSequence([self.hparams.seed, self.iteration, slot, 1]).generate_state(1, np.uint64)[0]
        order = torch.randperm(real_labels.shape[0], generator=torch.Generator().manual_seed(int(key >> 1)))
        return real_labels[order.to(real_labels.device)]

    def sample_latents(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws z ~ N(0, I): (count, latent_dim) on the module's device."""
        return torch.randn(count, self.latent_dim, device=self.device, generator=generator)

    def sample_attributes(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``count`` real attribute rows (count, A) drawn from the pool; None when unconditional."""
        if not self.attribute_names:
            return None
        pool = self.attribute_pool
        return pool[torch.randint(len(pool), (count,), device=pool.device, generator=generator)]

    @property
    def fixed_attributes(self) -> torch.Tensor | None:
        """The attributes of the fixed latents (the pool's first rows); None when unconditional."""
        return self.attribute_pool[: len(self.fixed_latents)] if self.attribute_names else None

    def sampler(self, ema: bool = True) -> nn.Module:
        """The network samples come from: G's average when there is one (unless ``ema`` is
        False), its batch-norm statistics estimated for its own weights first; else G."""
        if not ema or self.ema is None:
            return self.generator
        genes = lambda count, rng: (self.sample_latents(count, rng), self.sample_attributes(count, rng))  # noqa: E731
        self.ema.refresh_statistics(genes, self.hparams.seed + 2, self.iteration)
        return self.generator_ema

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, attributes: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """Renders latents (B, latent_dim) into images (B, 3, S, S) in [-1, 1], in eval mode.

        A conditional GAN needs ``attributes`` (B, A) in {0, 1}, in the order of
        ``attribute_names``. Uses G's average when there is one (unless ``ema`` is False),
        with batch-norm statistics estimated for its own weights first.
        """
        if self.attribute_names and attributes is None:
            raise FacesError(f"this GAN is conditioned on {', '.join(self.attribute_names)}: pass their values")
        generator = self.sampler(ema)
        was_training = generator.training
        generator.eval()
        try:
            labels = attributes.to(self.device, self.dtype) if self.attribute_names else None
            return enlarge(generator(latents.to(self.device), labels), self.image_size)  # growing: at full size
        finally:
            generator.train(was_training)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Turns seeds into images as ``generate`` does (``generator.seed_genes``): seed i gives
        the same face, with the attribute values asked for (``data.predict_attributes``)."""
        seeds, values, asked = batch if isinstance(batch, (list, tuple)) else (batch, None, None)
        wanted = {}
        if self.attribute_names:
            if values is None or values.shape[1] != len(self.attribute_names):
                raise FacesError(
                    f"the model is conditioned on {' '.join(self.attribute_names)}: set data.attributes to them"
                )
            wanted = {name: float(values[0, c]) for c, name in enumerate(self.attribute_names) if asked[0, c]}
        pool = self.attribute_pool if self.attribute_names else torch.zeros(0, 0)
        latents, attributes = seed_genes(seeds.tolist(), self.latent_dim, self.attribute_names, pool, wanted)
        return {"indices": seeds.cpu(), "images": to_uint8(self.generate(latents, attributes)).cpu()}


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
