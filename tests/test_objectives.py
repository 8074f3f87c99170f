import math

import pytest
import torch

from lightning_faces.objectives import (
    Hinge,
    LeastSquares,
    NonSaturating,
    Wasserstein,
    accuracy,
    binary_cross_entropy_loss,
    non_saturating_loss,
    smoothed_targets,
)
from lightning_faces.regularizers import ParameterAverage, feature_matching_loss

CPU = torch.device("cpu")


def test_targets_without_smoothing_are_one_and_zero():
    real, fake = smoothed_targets(5, "none", True, CPU)
    assert torch.equal(real, torch.ones(5)) and torch.equal(fake, torch.zeros(5))


def test_one_sided_smoothing_softens_only_real():
    real, fake = smoothed_targets(5, "one_sided", True, CPU)
    assert torch.allclose(real, torch.full((5,), 0.9)) and torch.equal(fake, torch.zeros(5))


def test_random_smoothing_draws_from_the_documented_ranges():
    real, fake = smoothed_targets(10_000, "random", True, CPU, torch.Generator().manual_seed(0))
    assert real.min() >= 0.8 and real.max() <= 1.0 and real.std() > 0.05
    assert fake.min() >= 0.0 and fake.max() <= 0.1 and fake.std() > 0.02
    assert real.mean().item() == pytest.approx(0.9, abs=0.01)
    real, fake = smoothed_targets(100, "random", False, CPU)
    assert torch.equal(fake, torch.zeros(100)) and real.min() >= 0.8


def test_discriminator_loss_is_binary_cross_entropy():
    real_logits, fake_logits = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    real_t, fake_t = torch.tensor([0.9, 0.9]), torch.tensor([0.0, 0.1])

    def bce(logit, target):
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    expected = 0.5 * ((bce(2.0, 0.9) + bce(-1.0, 0.9)) / 2 + (bce(0.5, 0.0) + bce(-3.0, 0.1)) / 2)
    assert binary_cross_entropy_loss(real_logits, fake_logits, real_t, fake_t).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_generator_loss_is_non_saturating():
    logits = torch.tensor([-5.0, 0.0, 5.0])
    expected = -torch.log(torch.sigmoid(logits)).mean()
    assert non_saturating_loss(logits).item() == pytest.approx(expected.item(), rel=1e-6)
    # its gradient stays large where D confidently rejects the fake (the saturating loss vanishes there)
    x = torch.tensor([-10.0], requires_grad=True)
    non_saturating_loss(x).backward()
    assert x.grad.abs().item() > 0.99


def test_feature_matching_compares_batch_means_and_only_trains_g():
    real = torch.randn(8, 4, 2, 2)
    fake = (real[torch.randperm(8)] + 0).requires_grad_()  # same examples reordered: same mean
    assert feature_matching_loss(real, fake).item() == pytest.approx(0.0, abs=1e-10)
    real = torch.randn(8, 4, 2, 2, requires_grad=True)
    fake = torch.randn(8, 4, 2, 2, requires_grad=True)
    loss = feature_matching_loss(real, fake)
    expected = (real.flatten(1).mean(0) - fake.flatten(1).mean(0)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert real.grad is None and fake.grad is not None


def test_accuracy_counts_both_halves():
    assert accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -2.0])).item() == 0.75


def test_parameter_average_is_the_running_mean_and_penalty_its_distance():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = ParameterAverage(net)  # history: [1, 2]
    for value in ([[3.0, 4.0]], [[5.0, 0.0]]):
        with torch.no_grad():
            net.weight.copy_(torch.tensor(value))
        average.update(net)
    torch.testing.assert_close(average.avg_0, torch.tensor([[3.0, 2.0]]))  # mean of the three
    assert int(average.count) == 3
    penalty = average.penalty(net)  # (5-3)^2 + (0-2)^2
    assert penalty.item() == pytest.approx(8.0)
    penalty.backward()  # pulls the weights toward the historical mean
    torch.testing.assert_close(net.weight.grad, torch.tensor([[4.0, -4.0]]))
    assert "avg_0" in average.state_dict() and "count" in average.state_dict()


def test_each_objective_computes_its_papers_formula():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # hinge: mean(max(0, 1 - real)) + mean(max(0, 1 + fake)); G: -mean(fake)
    assert Hinge().discriminator_loss(real, fake).item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3)
    assert Hinge().generator_loss(real, fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    # Wasserstein critic: mean(fake) - mean(real)
    assert Wasserstein().discriminator_loss(real, fake).item() == pytest.approx((-0.5 / 3) - (1.5 / 3))
    # least squares: 1/2 mean((real - 1)^2) + 1/2 mean(fake^2); G: 1/2 mean((fake - 1)^2)
    ls = LeastSquares()
    assert ls.discriminator_loss(real, fake).item() == pytest.approx(
        0.5 * (1 + 0.25 + 4) / 3 + 0.5 * (4 + 0 + 2.25) / 3
    )
    assert ls.generator_loss(real, fake).item() == pytest.approx(0.5 * (9 + 1 + 0.25) / 3)
    assert ls.threshold == 0.5 and ls.probability(torch.tensor([1.7])).item() == 1.0


def test_label_smoothing_applies_in_training_only():
    objective = NonSaturating("one_sided")
    real, fake = torch.tensor([3.0]), torch.tensor([-3.0])
    smoothed = objective.discriminator_loss(real, fake)
    objective.eval()
    plain = objective.discriminator_loss(real, fake)
    assert plain.item() == pytest.approx(binary_cross_entropy_loss(real, fake, torch.ones(1), torch.zeros(1)).item())
    assert smoothed.item() > plain.item()  # a 0.9 target penalizes a confident logit of 3
