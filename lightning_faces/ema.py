"""An exponential moving average of G's weights, with batch-norm statistics of its own.

Samples and FID use the average: it changes slowly, so it averages away the last iterations'
oscillation (Karras et al. 2018; Yazici et al. 2019). The averaged network is a copy of G that
the GAN registers as ``generator_ema`` (its checkpoint keys); this class keeps it up to date.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from lightning_faces import schedules
from lightning_faces.errors import FacesError
from lightning_faces.schedules import Cosine

STATISTICS_BATCH = 64  # latents per forward pass when the statistics are estimated


class EMA:
    """The average ``ema <- beta * ema + (1 - beta) * G``, taken after each G update.

    ``beta``, the weight of the past, is ``decay`` per update, or set by a half-life in images
    (StyleGAN2-ADA, R3GAN): beta = 0.5 ** (batch / half_life), so the average means the same at
    any batch size. With ``ramp``, the half-life is at most ``ramp`` times the images seen so far
    (StyleGAN2-ADA's 0.05): early on the average follows G closely instead of keeping G's untrained
    start (at decay 0.999, a third of the average is still that start after 1,000 updates).

    Args:
        generator: G; the average starts as a copy of it.
        decay: beta per update, e.g. 0.999; or None with ``half_life``.
        statistics_samples: latents the average's batch-norm statistics are estimated from.
        half_life: images after which G's weights of now count half, fixed or a
            ``schedules.Cosine`` over images seen (R3GAN: 0 -> 500k at 64 px); None with ``decay``.
        ramp: cap the half-life at this fraction of the images seen (None: no cap).
    """

    def __init__(
        self,
        generator: nn.Module,
        decay: float | None = None,
        statistics_samples: int = 256,
        half_life: float | Cosine | None = None,
        ramp: float | None = None,
    ) -> None:
        if (decay is None) == (half_life is None):
            raise FacesError("set one of ema_decay (per update, e.g. 0.999) and ema_half_life (in images)")
        if decay is not None and not 0 < decay < 1:
            raise FacesError(f"ema_decay must be between 0 and 1 (e.g. 0.999), got {decay}")
        if half_life is not None:
            schedules.check("ema_half_life", half_life)
        if ramp is not None and ramp <= 0:
            raise FacesError(f"ema_ramp must be above 0 (StyleGAN2-ADA: 0.05), got {ramp}")
        if statistics_samples < 1:
            raise FacesError(f"ema_statistics_samples must be at least 1, got {statistics_samples}")
        self.network = copy.deepcopy(generator).requires_grad_(False)
        self.decay, self.half_life, self.ramp = decay, half_life, ramp
        self.statistics_samples = statistics_samples
        self._statistics_at: int | None = None  # the iteration the statistics were estimated at

    @property
    def fixed(self) -> bool:
        """Whether beta is the plain ``decay`` at every update."""
        return self.half_life is None and self.ramp is None

    def beta(self, batch: float, images_seen: int) -> float:
        """The weight of the past in the update after ``images_seen`` images, ``batch`` of them new."""
        if self.fixed:
            return float(self.decay)  # type: ignore[arg-type]
        if self.half_life is not None:
            half_life = schedules.value(self.half_life, images_seen)
        else:  # the half-life that decay has at this batch size
            half_life = batch * math.log(0.5) / math.log(self.decay)  # type: ignore[arg-type]
        if self.ramp is not None:
            half_life = min(half_life, self.ramp * images_seen)
        return 0.5 ** (batch / half_life) if half_life > 0 else 0.0

    @torch.no_grad()
    def update(self, generator: nn.Module, beta: float) -> None:
        """Moves the average toward G's current weights (one fused op over all parameters)."""
        torch._foreach_lerp_(list(self.network.parameters()), list(generator.parameters()), 1.0 - beta)

    @torch.no_grad()
    def refresh_statistics(self, sample: Callable[[int, torch.Generator], tuple], seed: int, iteration: int) -> None:
        """Estimates the average's batch-norm running statistics for its own weights.

        G's running statistics belong to G's current weights, not to an average of past ones,
        and sampling the average with them washes colours out and blurs. As BigGAN's "standing
        statistics": run it in training mode over fixed latents (``sample(count, rng)`` gives
        the network's inputs) and keep each layer's plain mean of batch statistics. Once per
        training iteration at most; the same latents on every rank, so every rank gets the same statistics.
        """
        layers = [m for m in self.network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers or self._statistics_at == iteration:
            return
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches below
        device = next(self.network.parameters()).device
        rng = torch.Generator(device=device).manual_seed(seed)
        was_training = self.network.training
        self.network.train()
        try:
            for start in range(0, self.statistics_samples, STATISTICS_BATCH):
                self.network(*sample(min(STATISTICS_BATCH, self.statistics_samples - start), rng))
        finally:
            self.network.train(was_training)
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
        self._statistics_at = iteration

    def forget_statistics(self) -> None:
        """Marks the statistics stale (weights were loaded from a checkpoint)."""
        self._statistics_at = None
