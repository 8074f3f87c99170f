"""Running averages of a network's parameters (historical averaging, Salimans et al. 2016)."""

from __future__ import annotations

import torch
from torch import nn


class ParameterAverage(nn.Module):
    """Keeps the running mean of a network's parameters over all updates so far.

    ``penalty(net)`` is sum_i ||theta_i - mean_i||^2, the historical-averaging term added to a
    player's loss; ``update(net)`` folds the current parameters into the mean after each step.
    The averages are buffers, so they are saved in checkpoints and move with the module's device.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._names = [name for name, _ in net.named_parameters()]
        for index, (_, param) in enumerate(net.named_parameters()):
            self.register_buffer(f"avg_{index}", param.detach().clone())
        self.register_buffer("count", torch.ones((), dtype=torch.long))

    def _averages(self) -> list[torch.Tensor]:
        return [getattr(self, f"avg_{i}") for i in range(len(self._names))]

    def penalty(self, net: nn.Module) -> torch.Tensor:
        """Squared distance of ``net``'s parameters from their historical mean (differentiable)."""
        params = list(net.parameters())
        return sum((p - a).square().sum() for p, a in zip(params, self._averages(), strict=True))  # type: ignore[return-value]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Adds the current parameters to the running mean: mean += (theta - mean) / (t + 1)."""
        self.count += 1
        weight = 1.0 / self.count.float()
        for param, avg in zip(net.parameters(), self._averages(), strict=True):
            avg.lerp_(param.detach(), weight)
