"""Adversarial losses and the stabilization tricks of Salimans et al. (2016) as pure functions.

Logits are D's raw outputs (B,); targets are per-example label values in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LabelSmoothing = Literal["none", "one_sided", "random"]

ONE_SIDED_REAL = 0.9  # Salimans et al.: smooth only the real side, 1 -> 0.9
RANDOM_REAL = (0.8, 1.0)  # "soft labels" of the GAN-hacks list: real ~ U(0.8, 1.0)
RANDOM_FAKE = (0.0, 0.1)  # and fake ~ U(0.0, 0.1)


def discriminator_targets(
    batch_size: int,
    smoothing: LabelSmoothing,
    smooth_fake: bool,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (real_targets, fake_targets), each (B,), for D's loss under a smoothing scheme."""
    ones = torch.ones(batch_size, device=device)
    zeros = torch.zeros(batch_size, device=device)
    if smoothing == "none":
        return ones, zeros
    if smoothing == "one_sided":
        return ones * ONE_SIDED_REAL, zeros
    real = torch.empty(batch_size, device=device).uniform_(*RANDOM_REAL, generator=generator)
    fake = torch.empty(batch_size, device=device).uniform_(*RANDOM_FAKE, generator=generator)
    return real, fake if smooth_fake else zeros


def discriminator_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    real_targets: torch.Tensor,
    fake_targets: torch.Tensor,
) -> torch.Tensor:
    """Binary cross-entropy of D on a real and a fake batch, averaged over both halves."""
    # -[t log s(l) + (1 - t) log(1 - s(l))], computed stably from logits
    real_loss = F.binary_cross_entropy_with_logits(real_logits, real_targets)
    fake_loss = F.binary_cross_entropy_with_logits(fake_logits, fake_targets)
    return 0.5 * (real_loss + fake_loss)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (Goodfellow et al., 2014): maximize log D(G(z))."""
    return F.softplus(-fake_logits).mean()  # -log(sigmoid(logits))


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between the batch means of D's features on real and fake images.

    || E f(x) - E f(G(z)) ||^2, divided by the feature count so that a weight means the same at
    any D width or resolution. Real features are treated as constants: only G learns from this.
    """
    real_mean = real_features.detach().flatten(1).mean(0)  # (F,)
    fake_mean = fake_features.flatten(1).mean(0)
    return (real_mean - fake_mean).square().mean()


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Fraction of the real and fake examples D classifies right (logit > 0 means "real")."""
    correct = (real_logits > 0).float().sum() + (fake_logits <= 0).float().sum()
    return correct / (real_logits.numel() + fake_logits.numel())
