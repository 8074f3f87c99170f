"""Each penalty's formula on a D whose input gradient is known, and the penalties in training."""

import pytest
import torch
from torch import nn

from lightning_faces.augment import DiffAugment
from lightning_faces.errors import FacesError
from lightning_faces.nets import Scores
from lightning_faces.objectives import Hinge
from lightning_faces.regularizers import R1, FeatureMatching, GradientPenalty, Step
from tests.conftest import tiny_gan
from tests.test_module import snapshot, train


class LinearCritic(nn.Module):
    """D(x) = w . x: its gradient with respect to x is w for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 3, 2, 2), 0.5))  # ||w||^2 = 12 * 0.25 = 3

    def forward(self, x: torch.Tensor) -> Scores:
        return Scores((x * self.w).sum(dim=(1, 2, 3)), x.flatten(1))


def step_with(critic: nn.Module, iteration: int = 0) -> Step:
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    return Step(critic, real, fake, critic(fake)[1], critic, iteration)


def test_r1_is_half_gamma_times_the_squared_input_gradient_and_lazy():
    critic = LinearCritic()
    r1 = R1(gamma=2.0, every=4)
    penalty = r1.penalty(step_with(critic, iteration=8))
    assert penalty.item() == pytest.approx(0.5 * 2.0 * 4 * 3.0)  # gamma/2 * every * ||w||^2
    penalty.backward()  # differentiable in D's parameters: d/dw of 4 * ||w||^2 = 8 w
    torch.testing.assert_close(critic.w.grad, 8 * critic.w.detach())
    assert r1.penalty(step_with(critic, iteration=9)) is None  # only every 4th D step
    with pytest.raises(FacesError, match="R1 every must be at least 1"):
        R1(every=0)


def test_gradient_penalty_pulls_the_input_gradient_norm_to_one():
    critic = LinearCritic()  # ||grad|| = sqrt(3) at every interpolate
    penalty = GradientPenalty(weight=10.0).penalty(step_with(critic))
    assert penalty.item() == pytest.approx(10.0 * (3**0.5 - 1) ** 2, rel=1e-5)
    with torch.no_grad():
        critic.w.fill_(0.5 / 3**0.5)  # ||w|| = 1: nothing to penalize
    assert GradientPenalty().penalty(step_with(critic)).item() == pytest.approx(0.0, abs=1e-10)


def test_feature_matching_compares_ds_features_of_real_and_fake():
    critic = LinearCritic()
    step = step_with(critic)
    expected = (step.real.flatten(1).mean(0) - step.fake.flatten(1).mean(0)).square().mean()
    assert FeatureMatching(weight=3.0).penalty(step).item() == pytest.approx(3.0 * expected.item(), rel=1e-5)


def test_r1_and_diffaugment_train_a_gan_and_are_logged(tmp_path):
    model = tiny_gan(objective=Hinge(), d_regularizers=[R1(gamma=1.0, every=2)], augment=DiffAugment())
    before = snapshot(model.discriminator)
    trainer = train(tmp_path, model, steps=3, log_every_n_steps=1)
    assert trainer.global_step == 3 and not torch.equal(snapshot(model.discriminator), before)
    assert trainer.logged_metrics["train/d_r1"] > 0  # logged at iterations 0 and 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_r1_changes_ds_update_and_nothing_else_does(tmp_path):
    def d_after_one_step(regularizers):
        torch.manual_seed(0)
        model = tiny_gan(d_regularizers=regularizers)
        train(tmp_path, model, steps=1)
        return snapshot(model.discriminator)

    plain = d_after_one_step([])
    torch.testing.assert_close(d_after_one_step([]), plain)  # the run is repeatable
    assert not torch.allclose(d_after_one_step([R1(gamma=100.0, every=1)]), plain)
