"""Penalties the training step adds to a player's loss, each a small class over a pure function.

D's regularizers (``GAN(d_regularizers=[...])``) and G's (``g_regularizers``) see the same
``Step``: the batch and D as the step sees it (after augmentation). Each penalty is already
weighted; the step logs it as ``train/{d,g}_<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_faces import schedules
from lightning_faces.errors import FacesError
from lightning_faces.nets.contract import Scores
from lightning_faces.schedules import Cosine

Score = Callable[..., Scores]  # (images, attributes=the real ones) -> D(augment(images), attributes)


@dataclass
class Step:
    """What a penalty may look at in one player's update."""

    net: nn.Module  # the player being updated (unwrapped: its parameters)
    real: torch.Tensor  # (B, 3, S, S) in [-1, 1], before augmentation
    fake: torch.Tensor  # G's images, before augmentation (with gradients in G's update)
    fake_features: torch.Tensor  # D's features of the fakes, as the loss saw them
    score: Score  # (images, attributes=real ones) -> D(augment(images)); in D's update through D's DDP
    d_steps: int  # D updates before this one (lazy regularization)
    images_seen: int = 0  # real images trained on before this iteration (schedules)
    fake_labels: torch.Tensor | None = None  # the attributes G was asked for (conditional GANs)


# -- pure functions --------------------------------------------------------------------------


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between the batch means of D's features on real and fake images.

    || E f(x) - E f(G(z)) ||^2 (Salimans et al., 2016), divided by the feature count so that a
    weight means the same at any D width or resolution. Real features are constants: only G
    learns from this.
    """
    real_mean = real_features.detach().flatten(1).mean(0)  # (F,)
    fake_mean = fake_features.flatten(1).mean(0)
    return (real_mean - fake_mean).square().mean()


def input_gradient_penalty(score: Score, images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over ``images``, differentiable in D's parameters (double backward)."""
    images = images.detach().requires_grad_(True)
    logits = score(images).logits
    (gradient,) = torch.autograd.grad(logits.sum(), images, create_graph=True)  # (B, 3, S, S)
    return gradient.square().sum(dim=(1, 2, 3)).mean()


def gradient_norm_penalty(score: Score, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E (||grad D(x_hat)|| - 1)^2 at x_hat = e x + (1 - e) G(z), e ~ U(0, 1) per image."""
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    between = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    logits = score(between).logits
    (gradient,) = torch.autograd.grad(logits.sum(), between, create_graph=True)
    return (gradient.flatten(1).norm(dim=1) - 1.0).square().mean()


# -- regularizers ----------------------------------------------------------------------------


def penalties(regularizers: Iterable[Regularizer], step: Step, player: str, logs: dict[str, torch.Tensor]) -> Any:
    """The sum of the penalties that apply at this step (0 when none), each logged as
    ``train/<player>_<name>``."""
    total: Any = 0.0
    for regularizer in regularizers:
        penalty = regularizer.penalty(step)
        if penalty is not None:
            logs[f"train/{player}_{regularizer.name}"] = penalty.detach()
            for setting, number in regularizer.scheduled(step.images_seen).items():
                logs[f"train/{player}_{regularizer.name}_{setting}"] = torch.tensor(number)
            total = total + penalty
    return total


class Regularizer(nn.Module):
    """A weighted penalty on one player. ``bind`` is called once with the player's network (for
    state that mirrors it); ``after_step`` after each of the player's optimizer steps."""

    name = "penalty"

    def bind(self, net: nn.Module) -> None:
        pass

    def penalty(self, step: Step) -> torch.Tensor | None:
        """The weighted penalty to add, or None when it does not apply at this step."""
        raise NotImplementedError

    def scheduled(self, images_seen: int) -> dict[str, float]:
        """The settings that follow a schedule, by name, at this point (the step logs them)."""
        return {}

    def after_step(self, net: nn.Module) -> None:
        pass


def _check_weight(name: str, value: float) -> float:
    if value < 0:
        raise FacesError(f"{name} must be 0 or more, got {value}")
    return value


class _ZeroCentred(Regularizer):
    """gamma/2 E ||grad_x D(x)||^2 on one side's images, every ``every`` D steps (then x every)."""

    def __init__(self, gamma: float | Cosine = 10.0, every: int = 16) -> None:
        super().__init__()
        self.gamma = schedules.check(f"{type(self).__name__} gamma", gamma)
        if every < 1:
            raise FacesError(f"{type(self).__name__} every must be at least 1, got {every}")
        self.every = every

    def penalty(self, step: Step) -> torch.Tensor | None:
        if step.d_steps % self.every != 0:
            return None
        gradient_norms = input_gradient_penalty(*self.scored(step))
        return 0.5 * schedules.value(self.gamma, step.images_seen) * self.every * gradient_norms

    def scored(self, step: Step) -> tuple[Score, torch.Tensor]:
        """D as it scores the images penalised, and those images: the real ones."""
        return step.score, step.real

    def scheduled(self, images_seen: int) -> dict[str, float]:
        return {"gamma": self.gamma(images_seen)} if isinstance(self.gamma, Cosine) else {}


class R1(_ZeroCentred):
    """R1 (Mescheder et al., 2018): gamma/2 E ||grad_x D(x)||^2 on real images, for D.

    Lazy, as StyleGAN2: computed every ``every`` D steps and multiplied by ``every``, so its
    average strength is the same at a fraction of the cost (each costs a double backward).

    Args:
        gamma: strength, fixed or a ``schedules.Cosine`` over images seen (StyleGAN2 uses 10 at
            64-256 px; smaller images want less, e.g. 0.1-1; R3GAN: 2 -> 0.2 at 64 px).
        every: D steps between evaluations (StyleGAN2: 16); 1 is the eager penalty (R3GAN's).
    """

    name = "r1"


class R2(_ZeroCentred):
    """R2: gamma/2 E ||grad_x D(x)||^2 on G's images (detached), for D; R3GAN pairs it with R1.

    R1 alone keeps D smooth on the data; R2 also keeps it smooth where the fakes are, which
    R3GAN shows is what lets the relativistic loss converge.

    Args:
        gamma: strength, fixed or a ``schedules.Cosine`` over images seen (R3GAN: R1's gamma).
        every: D steps between evaluations; 1 is the eager penalty (R3GAN's).
    """

    name = "r2"

    def scored(self, step: Step) -> tuple[Score, torch.Tensor]:
        return (lambda images: step.score(images, step.fake_labels)), step.fake


class GradientPenalty(Regularizer):
    """WGAN-GP's two-sided penalty (Gulrajani et al., 2017), for D, on real-fake interpolates.

    Args:
        weight: lambda (the paper: 10).
    """

    name = "gp"

    def __init__(self, weight: float = 10.0) -> None:
        super().__init__()
        self.weight = _check_weight("GradientPenalty weight", weight)

    def penalty(self, step: Step) -> torch.Tensor:
        return self.weight * gradient_norm_penalty(step.score, step.real, step.fake)


class FeatureMatching(Regularizer):
    """Feature matching (Salimans et al., 2016), for G: match the mean of D's features on real
    images. With ``GAN(adversarial_weight=0)`` it replaces G's adversarial loss altogether.

    Args:
        weight: its weight in G's loss.
    """

    name = "feature_matching"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = _check_weight("FeatureMatching weight", weight)

    def penalty(self, step: Step) -> torch.Tensor:
        with torch.no_grad():
            real_features = step.score(step.real).features
        return self.weight * feature_matching_loss(real_features, step.fake_features)


class HistoricalAveraging(Regularizer):
    """Historical averaging (Salimans et al., 2016): weight * sum_i ||theta_i - mean_i||^2, the
    distance of the player's parameters from the running mean of their past values. Add it to
    both players' lists to regularize both.

    Args:
        weight: its weight in the player's loss.
    """

    name = "historical_averaging"

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__()
        self.weight = _check_weight("HistoricalAveraging weight", weight)
        self.average: ParameterAverage | None = None

    def bind(self, net: nn.Module) -> None:
        self.average = ParameterAverage(net)

    def penalty(self, step: Step) -> torch.Tensor:
        assert self.average is not None, "bind() runs in GAN.__init__"
        return self.weight * self.average.penalty(step.net)

    def after_step(self, net: nn.Module) -> None:
        assert self.average is not None
        self.average.update(net)


class ParameterAverage(nn.Module):
    """The running mean of a network's parameters over all its updates so far.

    The averages are buffers: saved in checkpoints, moved with the module's device.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._count_params = len(list(net.parameters()))
        for index, param in enumerate(net.parameters()):
            self.register_buffer(f"avg_{index}", param.detach().clone())
        self.register_buffer("count", torch.ones((), dtype=torch.long))

    def _averages(self) -> list[torch.Tensor]:
        return [getattr(self, f"avg_{i}") for i in range(self._count_params)]

    def penalty(self, net: nn.Module) -> torch.Tensor:
        """Squared distance of ``net``'s parameters from their historical mean (differentiable)."""
        params = list(net.parameters())
        return sum((p - a).square().sum() for p, a in zip(params, self._averages(), strict=True))  # type: ignore[return-value]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Folds the current parameters into the mean: mean += (theta - mean) / (t + 1)."""
        self.count += 1
        weight = 1.0 / self.count.float()
        for param, avg in zip(net.parameters(), self._averages(), strict=True):
            avg.lerp_(param.detach(), weight)
