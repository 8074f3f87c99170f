"""What D and G minimize: small classes over pure loss functions, chosen in YAML by ``class_path``.

Logits are D's raw outputs (B,). Each objective gives both players' losses from D's scores on a
real and a fake batch, so a relativistic loss (G's compares its fakes with real images) is a
small class like the others; the step adds the regularizers' penalties to these. In G's update
the real scores are those of D's update in the same iteration, detached. An objective is an
``nn.Module`` without parameters so that ``train()``/``eval()`` reach it: label smoothing applies
in training only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_faces.errors import FacesError

LabelSmoothing = Literal["none", "one_sided", "random"]

ONE_SIDED_REAL = 0.9  # Salimans et al.: smooth only the real side, 1 -> 0.9
RANDOM_REAL = (0.8, 1.0)  # "soft labels" of the GAN-hacks list: real ~ U(0.8, 1.0)
RANDOM_FAKE = (0.0, 0.1)  # and fake ~ U(0.0, 0.1)


# -- pure functions --------------------------------------------------------------------------


def binary_cross_entropy_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_targets: torch.Tensor, fake_targets: torch.Tensor
) -> torch.Tensor:
    """D's binary cross-entropy on a real and a fake batch, averaged over both halves."""
    # -[t log s(l) + (1 - t) log(1 - s(l))], computed stably from logits
    real_loss = F.binary_cross_entropy_with_logits(real_logits, real_targets)
    fake_loss = F.binary_cross_entropy_with_logits(fake_logits, fake_targets)
    return 0.5 * (real_loss + fake_loss)


def non_saturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss (Goodfellow et al., 2014): maximize log D(G(z))."""
    return F.softplus(-fake_logits).mean()  # -log(sigmoid(logits))


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's hinge loss (Lim & Ye 2017; SNGAN, BigGAN): E max(0, 1 - D(x)) + E max(0, 1 + D(G(z)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's hinge-GAN loss: -E D(G(z))."""
    return -fake_logits.mean()


def wasserstein_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's loss (Arjovsky et al., 2017): E D(G(z)) - E D(x), an estimate of -W1."""
    return fake_logits.mean() - real_logits.mean()


def least_squares_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN's D loss (Mao et al., 2017, a=0, b=1): 1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2."""
    return 0.5 * (real_logits - 1.0).square().mean() + 0.5 * fake_logits.square().mean()


def least_squares_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN's G loss (c=1): 1/2 E (D(G(z)) - 1)^2."""
    return 0.5 * (fake_logits - 1.0).square().mean()


def relativistic_pairing_loss(winner_logits: torch.Tensor, loser_logits: torch.Tensor) -> torch.Tensor:
    """RpGAN (Jolicoeur-Martineau 2019; R3GAN): E softplus(-(D(a) - D(b))) over paired examples,
    which the player minimizes when each of its ``winner`` examples outscores its paired ``loser``."""
    return F.softplus(loser_logits - winner_logits).mean()


def attribute_cross_entropy(attribute_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE, averaged over images and attributes: -[y log s(l) + (1 - y) log(1 - s(l))]."""
    return F.binary_cross_entropy_with_logits(attribute_logits, targets)


def smoothed_attributes(attributes: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Targets pulled toward 1/2 by ``smoothing``: 1 -> 1 - s/2, 0 -> s/2 (label smoothing)."""
    return attributes * (1.0 - smoothing) + 0.5 * smoothing


def accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Fraction of the real and fake examples D classifies right (score > threshold: "real")."""
    correct = (real_logits > threshold).float().sum() + (fake_logits <= threshold).float().sum()
    return correct / (real_logits.numel() + fake_logits.numel())


def smoothed_targets(
    batch_size: int,
    smoothing: LabelSmoothing,
    smooth_fake: bool,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (real_targets, fake_targets), each (B,), for D's BCE under a smoothing scheme."""
    ones = torch.ones(batch_size, device=device)
    zeros = torch.zeros(batch_size, device=device)
    if smoothing == "none":
        return ones, zeros
    if smoothing == "one_sided":
        return ones * ONE_SIDED_REAL, zeros
    real = torch.empty(batch_size, device=device).uniform_(*RANDOM_REAL, generator=generator)
    fake = torch.empty(batch_size, device=device).uniform_(*RANDOM_FAKE, generator=generator)
    return real, fake if smooth_fake else zeros


# -- objectives ------------------------------------------------------------------------------


class Objective(nn.Module):
    """D's and G's losses. ``threshold`` splits D's scores into "real" and "fake" (accuracy,
    D skipping); ``probability`` turns scores into the D(x) and D(G(z)) the logs show."""

    threshold = 0.0
    relativistic = False  # G's loss reads D's real scores: the step scores the reals again with the D just updated

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def readings(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the logs show of D's scores: mean D(x), mean D(G(z)) and D's accuracy."""
        return {
            "d_real": self.probability(real_logits).mean(),
            "d_fake": self.probability(fake_logits).mean(),
            "d_accuracy": accuracy(real_logits, fake_logits, self.threshold),
        }


class NonSaturating(Objective):
    """The original GAN: D's binary cross-entropy, G's non-saturating loss (DCGAN's objective).

    Args:
        label_smoothing: D's targets in training: ``none`` (1/0), ``one_sided`` (real 0.9) or
            ``random`` (real ~ U(0.8, 1.0), fake ~ U(0.0, 0.1)).
        smooth_fake_labels: with ``random``, also soften the fake targets (else they stay 0).
    """

    def __init__(self, label_smoothing: LabelSmoothing = "none", smooth_fake_labels: bool = True) -> None:
        super().__init__()
        self.label_smoothing, self.smooth_fake_labels = label_smoothing, smooth_fake_labels

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing if self.training else "none"  # evaluation: the plain loss
        targets = smoothed_targets(real_logits.shape[0], smoothing, self.smooth_fake_labels, real_logits.device)
        return binary_cross_entropy_loss(real_logits, fake_logits, *targets)

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return non_saturating_loss(fake_logits)


class Hinge(Objective):
    """Hinge loss, SNGAN's and BigGAN's objective."""

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return hinge_discriminator_loss(real_logits, fake_logits)

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return hinge_generator_loss(fake_logits)


class Wasserstein(Objective):
    """WGAN's critic loss. D must be kept Lipschitz: pair it with ``regularizers.GradientPenalty``
    (WGAN-GP, Gulrajani et al. 2017) or spectral norm. Scores are not probabilities: D(x) in the
    logs is sigmoid(score), a squashed view.

    Args:
        drift: weight of ProGAN's drift term, drift * E D(x)^2, which keeps the critic's scores
            from wandering far from 0 (ProGAN: 0.001; 0 is plain WGAN).
    """

    def __init__(self, drift: float = 0.0) -> None:
        super().__init__()
        if drift < 0:
            raise FacesError(f"Wasserstein drift must be at least 0 (ProGAN: 0.001), got {drift}")
        self.drift = drift

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        loss = wasserstein_discriminator_loss(real_logits, fake_logits)
        if self.drift:
            loss = loss + self.drift * real_logits.square().mean()  # + eps E D(x)^2
        return loss

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return hinge_generator_loss(fake_logits)  # -E D(G(z)), the same as hinge's G loss


class LeastSquares(Objective):
    """LSGAN: D regresses real to 1 and fake to 0, G pulls its fakes' scores to 1."""

    threshold = 0.5

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return least_squares_discriminator_loss(real_logits, fake_logits)

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return least_squares_generator_loss(fake_logits)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.clamp(0.0, 1.0)  # D's output is already on the 0..1 scale


class RelativisticPairing(Objective):
    """The relativistic pairing loss (RpGAN), R3GAN's objective: each real image is paired with
    a fake, and D learns to score the real one higher, G to score its fake higher.

    D minimizes E softplus(-(D(x) - D(G(z)))), G minimizes E softplus(-(D(G(z)) - D(x))). Unlike
    the non-saturating loss, D cannot win by pushing all fakes down at once, which R3GAN shows
    removes mode dropping on its own; with R1 and R2 (``regularizers``) it also converges locally.
    Its readings compare each pair (``readings``).
    """

    relativistic = True

    def readings(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pair by pair, as the loss sees them: D(x) is sigmoid(D(x) - D(G(z))), the chance D
        puts the real image above its paired fake, D(G(z)) the converse, and accuracy the share
        of pairs D orders right (only differences matter to this loss, not a score's sign)."""
        difference = real_logits - fake_logits
        return {
            "d_real": torch.sigmoid(difference).mean(),
            "d_fake": torch.sigmoid(-difference).mean(),
            "d_accuracy": (difference > 0).float().mean(),
        }

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return relativistic_pairing_loss(real_logits, fake_logits)

    def generator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return relativistic_pairing_loss(fake_logits, real_logits)


class AttributeLoss(nn.Module):
    """AC-GAN's auxiliary classification (Odena et al., 2017), for multi-label attributes.

    D's classifier head learns the attributes of real images; G learns to make fakes the head
    reads as the attributes it was asked for. D's head learns from real images only (not from
    G's fakes, as AC-GAN also did): early fakes show no attributes, and fitting their labels
    would teach the head nonsense.

    Args:
        weight: weight of the attribute BCE in both players' losses.
        smoothing: D's targets pulled toward 1/2 by this much in training (0.1: 1 -> 0.95,
            0 -> 0.05), like the real/fake label smoothing; G's targets stay 0/1.
    """

    def __init__(self, weight: float = 1.0, smoothing: float = 0.0) -> None:
        super().__init__()
        if weight < 0 or not 0 <= smoothing < 1:
            raise FacesError(
                f"model.attribute_loss needs weight >= 0 and 0 <= smoothing < 1, got {weight} and {smoothing}"
            )
        self.weight, self.smoothing = weight, smoothing

    def discriminator_loss(self, real_attribute_logits: torch.Tensor, real_attributes: torch.Tensor) -> torch.Tensor:
        smoothing = self.smoothing if self.training else 0.0
        return self.weight * attribute_cross_entropy(
            real_attribute_logits, smoothed_attributes(real_attributes, smoothing)
        )

    def generator_loss(self, fake_attribute_logits: torch.Tensor, fake_attributes: torch.Tensor) -> torch.Tensor:
        return self.weight * attribute_cross_entropy(fake_attribute_logits, fake_attributes)
