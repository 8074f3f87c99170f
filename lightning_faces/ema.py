"""An exponential moving average of G's weights, with batch-norm statistics of its own.

Samples and FID use the average: it changes slowly, so it averages away the last iterations'
oscillation (Karras et al. 2018; Yazici et al. 2019). The averaged network is a copy of G that
the GAN registers as ``generator_ema`` (its checkpoint keys); this class keeps it up to date.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lightning_faces.errors import FacesError

STATISTICS_BATCH = 64  # latents per forward pass when the statistics are estimated


class EMA:
    """The average ``ema <- decay * ema + (1 - decay) * G``, taken after each G update.

    Args:
        generator: G; the average starts as a copy of it.
        decay: e.g. 0.999 (weight of the past, per update).
        statistics_samples: latents the average's batch-norm statistics are estimated from.
    """

    def __init__(self, generator: nn.Module, decay: float, statistics_samples: int = 256) -> None:
        if not 0 < decay < 1:
            raise FacesError(f"ema_decay must be between 0 and 1 (e.g. 0.999), got {decay}")
        if statistics_samples < 1:
            raise FacesError(f"ema_statistics_samples must be at least 1, got {statistics_samples}")
        self.network = copy.deepcopy(generator).requires_grad_(False)
        self.decay, self.statistics_samples = decay, statistics_samples
        self._statistics_at: int | None = None  # the iteration the statistics were estimated at

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """Moves the average toward G's current weights (one fused op over all parameters)."""
        torch._foreach_lerp_(list(self.network.parameters()), list(generator.parameters()), 1.0 - self.decay)

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
