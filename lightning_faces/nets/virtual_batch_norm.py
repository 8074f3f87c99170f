"""Virtual batch norm (Salimans et al., 2016, section 3.4) and the reference batch it needs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_faces.errors import FacesError


class VirtualBatchNorm2d(nn.Module):
    """Batch norm with statistics from a reference batch fixed at the start of training.

    Salimans et al. (2016), "Improved techniques for training GANs", section 3.4: each example is
    normalized with the statistics of the reference batch combined with itself (weight 1/(N+1)),
    so an example's output does not depend on the other examples in its batch.

    The owning network first runs its reference batch with ``collect=True`` (which stores the
    reference statistics, with gradients), then the real batch.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.collect = False  # set by the owning network while it runs the reference batch
        self.ref_size = 1
        self._ref_mean: torch.Tensor | None = None
        self._ref_meansq: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3)
        if self.collect:
            self._ref_mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
            self._ref_meansq = x.square().mean(dims, keepdim=True)
            mean, meansq = self._ref_mean, self._ref_meansq
        else:
            if self._ref_mean is None or self._ref_meansq is None:
                raise RuntimeError("VirtualBatchNorm2d has no reference statistics yet")
            n = 1.0 / (self.ref_size + 1)
            # per-example statistics mixed with the reference batch's: (B, C, 1, 1)
            mean = (1 - n) * self._ref_mean + n * x.mean((2, 3), keepdim=True)
            meansq = (1 - n) * self._ref_meansq + n * x.square().mean((2, 3), keepdim=True)
        var = (meansq - mean.square()).clamp_min(0)
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)
        return x_hat * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def uses_virtual_batch_norm(net: nn.Module) -> bool:
    """Whether ``net`` has virtual batch norm layers (and so needs a reference batch)."""
    return any(isinstance(m, VirtualBatchNorm2d) for m in net.modules())


def reference_from_data(discriminator: nn.Module, data: Any, size: int, seed: int) -> None:
    """Gives a D with virtual batch norm its reference batch, ``size`` real images drawn from
    the datamodule (its ``reference_images``), unless it has one (a resumed run)."""
    if not uses_virtual_batch_norm(discriminator) or discriminator.reference is not None:
        return
    if not hasattr(data, "reference_images"):
        raise FacesError("virtual batch norm in D needs a datamodule with reference_images (the lightning_faces ones)")
    device = next(discriminator.parameters()).device
    discriminator.set_reference(data.reference_images(size, seed).to(device))


class ReferenceBatchMixin:
    """Shared by G and D: a fixed reference batch for virtual batch norm, kept as a buffer."""

    reference: torch.Tensor | None

    def _vbn_layers(self) -> list[VirtualBatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, VirtualBatchNorm2d)]  # type: ignore[attr-defined]

    def set_reference(self, batch: torch.Tensor) -> None:
        """Fixes the reference batch (latents for G, real images for D) for virtual batch norm."""
        self.reference = batch.detach().clone()
        for layer in self._vbn_layers():
            layer.ref_size = batch.shape[0]

    def _collect_reference_statistics(self) -> None:
        if self.reference is None:
            raise RuntimeError("virtual batch norm needs a reference batch: call set_reference() before forward")
        layers = self._vbn_layers()
        for layer in layers:
            layer.collect = True
            layer.ref_size = self.reference.shape[0]
        try:
            self._body(self.reference)  # type: ignore[attr-defined]
        finally:
            for layer in layers:
                layer.collect = False
