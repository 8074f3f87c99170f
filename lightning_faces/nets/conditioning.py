"""How networks use attributes (CelebA's, multi-label in {0, 1}): one module for G, one for D.

G reads ``z`` concatenated with the attributes as +-1 (its first layer is linear, so this is a
learned embedding of the attributes added to the projection of ``z``). D either

- projects (Miyato & Koyama, 2018): logit += <W (2y - 1), phi(x)>, one embedding row per
  attribute, signed by whether it is on, summed: a multi-label form of the projection
  discriminator, where phi(x) is what D's real/fake head reads; or
- classifies (AC-GAN, Odena et al., 2017): an auxiliary head predicts the attributes from
  phi(x) as multi-label logits, trained with BCE by the GAN (``objectives.AttributeLoss``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from lightning_faces.errors import FacesError

Conditioning = Literal["projection", "auxiliary"]


def signed(labels: torch.Tensor | None, names: Sequence[str], network: str) -> torch.Tensor:
    """Attributes (B, A) in {0, 1} -> (B, A) in {-1, 1}; checks that they match the network's."""
    if labels is None or labels.ndim != 2 or labels.shape[1] != len(names):
        got = "none" if labels is None else f"shape {tuple(labels.shape)}"
        raise FacesError(f"{network} is conditioned on {len(names)} attributes ({' '.join(names)}): got {got}")
    return 2 * labels - 1


class ConditionalInput(nn.Module):
    """G's input: ``z`` (B, latent_dim) and attributes (B, A) -> (B, latent_dim + A)."""

    def __init__(self, attributes: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(attributes)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.names:
            return z
        return torch.cat([z, signed(labels, self.names, "the generator").to(z.dtype)], dim=1)


class AttributeHead(nn.Module):
    """D's use of the attributes, on the features (B, F) its real/fake head reads.

    Args:
        attributes: the attribute names (none: this head does nothing).
        features: F, the size of the flattened features.
        conditioning: ``projection`` or ``auxiliary`` (see the module's docstring).
        normalize: applied to the new linear layer (``spectral_norm`` in SNGAN's D).
    """

    def __init__(
        self,
        attributes: Sequence[str],
        features: int,
        conditioning: Conditioning,
        normalize: Callable[[nn.Module], nn.Module] = lambda layer: layer,
    ) -> None:
        super().__init__()
        if conditioning not in ("projection", "auxiliary"):
            raise FacesError(f"discriminator conditioning must be projection or auxiliary, got {conditioning!r}")
        self.names, self.conditioning = tuple(attributes), conditioning
        self.layer: nn.Module | None = None
        if self.names:
            count = len(self.names)
            if conditioning == "projection":
                self.layer = normalize(nn.Linear(count, features, bias=False))  # one row per attribute
            else:
                self.layer = normalize(nn.Linear(features, count))  # attribute logits

    @property
    def classifies(self) -> bool:
        return self.layer is not None and self.conditioning == "auxiliary"

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(projection term (B,) to add to the logits or None, attribute logits (B, A) or None)."""
        if self.layer is None:
            return None, None
        flat = features.flatten(1)  # (B, F)
        if self.conditioning == "auxiliary":
            return None, self.layer(flat)
        embedding = self.layer(signed(labels, self.names, "the discriminator").to(flat.dtype))  # (B, F)
        return (embedding * flat).sum(1), None
