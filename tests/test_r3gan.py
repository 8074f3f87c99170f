"""The modern recipe's parts: schedules over images seen, RpGAN, R2, the augmentation
probability, the EMA's half-life and ramp, R3GAN's networks, and configs/r3gan.yaml."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_faces.augment import DiffAugment, adjust_color, cut_out, translate
from lightning_faces.checkpoint import build, load_checkpoint
from lightning_faces.ema import EMA
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator, R3GANDiscriminator, R3GANGenerator
from lightning_faces.nets.contract import Scores
from lightning_faces.objectives import NonSaturating, RelativisticPairing
from lightning_faces.regularizers import R1, R2, Step, penalties
from lightning_faces.schedules import Cosine, value
from tests.conftest import celeba_args, run_cli
from tests.test_module import train


def test_a_cosine_schedule_moves_from_start_to_end_over_its_images_then_stays():
    schedule = Cosine(start=2.0, end=0.2, images=1000)
    assert schedule(0) == 2.0 and schedule(1000) == pytest.approx(0.2) and schedule(10**9) == pytest.approx(0.2)
    assert schedule(500) == pytest.approx(1.1)  # halfway: the mean
    assert schedule(250) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert value(0.5, 123) == 0.5 and value(schedule, 500) == pytest.approx(1.1)
    with pytest.raises(FacesError, match="images of at least 1"):
        Cosine(1.0, 0.0, images=0)
    with pytest.raises(FacesError, match="DiffAugment probability must be between 0 and 1"):
        DiffAugment(probability=Cosine(0.0, 1.5, 10))


def test_rpgan_pairs_each_real_with_a_fake_for_both_players():
    objective = RelativisticPairing()
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # D: softplus(-(D(x) - D(G(z)))), G: softplus(-(D(G(z)) - D(x))), pair by pair
    d_expected = (
        torch.nn.functional.softplus(torch.tensor(-1.0)) + torch.nn.functional.softplus(torch.tensor(1.0))
    ) / 2
    assert objective.discriminator_loss(real, fake) == pytest.approx(d_expected.item())
    assert objective.generator_loss(real, fake) == pytest.approx(objective.discriminator_loss(fake, real).item())
    # only the differences count: shifting every score changes nothing (non-saturating: it does)
    assert objective.discriminator_loss(real + 5, fake + 5) == pytest.approx(d_expected.item())
    assert NonSaturating().generator_loss(real + 5, fake + 5) != NonSaturating().generator_loss(real, fake)
    # its logs read pairs too: D(x) is the chance a real beats its fake, accuracy the pairs in order
    readings = objective.readings(
        torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, -3.0, 0.0])
    )  # D(x) - D(G(z)): 1, 3, -1
    assert readings["d_accuracy"] == pytest.approx(2 / 3)
    assert readings["d_real"] == pytest.approx(torch.sigmoid(torch.tensor([1.0, 3.0, -1.0])).mean().item())
    assert readings["d_real"] + readings["d_fake"] == pytest.approx(1.0)


def test_one_rpgan_iteration_moves_both_players_as_a_hand_written_rpgan_step(tmp_path):
    """D then G by plain SGD on R3GAN's networks (no normalization: the same numbers batch or no
    batch), against D <- D - lr grad softplus(-(D(x) - D(G(z)))), then with that D,
    G <- G - lr grad softplus(-(D(G(z)) - D(x)))."""
    import copy

    torch.manual_seed(0)
    nets = {"width": 8, "blocks": 1, "expansion": 1, "group_size": 4, "image_size": 16}
    generator, discriminator = R3GANGenerator(latent_dim=8, **nets), R3GANDiscriminator(**nets)
    for layer in [*generator.modules(), *discriminator.modules()]:  # leave the zero start: every weight matters
        if isinstance(layer, torch.nn.Conv2d) and not layer.weight.any():
            torch.nn.init.normal_(layer.weight, 0, 0.1)
    g, d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    start_g, start_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    lr = 0.05
    model = GAN(generator, discriminator, objective=RelativisticPairing(), num_fixed_samples=4, channels_last=False,
                g_optimizer=lambda p: torch.optim.SGD(p, lr=lr),
                d_optimizer=lambda p: torch.optim.SGD(p, lr=lr))  # fmt: skip
    inputs: dict[str, torch.Tensor] = {}

    def record(name: str):  # the first input each network sees: the iteration's z and real batch
        def hook(module, args) -> None:
            inputs.setdefault(name, args[0].detach().clone())

        return hook

    generator.register_forward_pre_hook(record("z"))
    discriminator.register_forward_pre_hook(record("x"))
    train(tmp_path, model, steps=1)  # one iteration: D's step, then G's

    assert inputs["z"].shape == (8, 8) and inputs["x"].shape == (8, 3, 16, 16)  # the iteration's batch of 8
    softplus = torch.nn.functional.softplus
    fake = g(inputs["z"])
    d_loss = softplus(-(d(inputs["x"]).logits - d(fake.detach()).logits)).mean()
    d_grads = torch.autograd.grad(d_loss, list(d.parameters()))
    with torch.no_grad():
        for parameter, grad in zip(d.parameters(), d_grads, strict=True):
            parameter -= lr * grad
        real_logits = d(inputs["x"]).logits
    g_loss = softplus(-(d(fake).logits - real_logits)).mean()
    g_grads = torch.autograd.grad(g_loss, list(g.parameters()))
    with torch.no_grad():
        for parameter, grad in zip(g.parameters(), g_grads, strict=True):
            parameter -= lr * grad
    for trained, by_hand in [(discriminator, d), (generator, g)]:
        for (name, a), b in zip(trained.named_parameters(), by_hand.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for moved, start in [(d, start_d), (g, start_g)]:  # and the step was no small one
        pairs = zip(moved.parameters(), start.parameters(), strict=True)
        assert max(float((a - b).abs().max()) for a, b in pairs) > 1e-3


def test_the_recipe_trains_in_bf16_mixed_as_fit_chooses_on_a_cpu_with_bf16(tmp_path):
    """On a CPU with bf16 arithmetic ``fit`` trains in bf16-mixed unless told otherwise, R3GAN
    included: R1 and R2's double backward under bf16 autocast must give finite penalties that
    move D differently from the same steps without them, on fp32 weights."""
    nets = {"width": 8, "blocks": 1, "expansion": 1, "group_size": 4, "image_size": 16}
    trained, logs = {}, {}
    for gamma in (0.0, 10.0):
        torch.manual_seed(0)
        penalties = [R1(gamma=gamma, every=1), R2(gamma=gamma, every=1)]
        generator, discriminator = R3GANGenerator(latent_dim=8, **nets), R3GANDiscriminator(**nets)
        objective = RelativisticPairing()
        model = GAN(generator, discriminator, objective=objective, d_regularizers=penalties, num_fixed_samples=4)
        trainer = train(tmp_path, model, steps=3, precision="bf16-mixed")
        trained[gamma] = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
        logs[gamma] = {k: float(v) for k, v in trainer.logged_metrics.items() if k in ("train/d_r1", "train/d_r2")}
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert set(logs[10.0]) == {"train/d_r1", "train/d_r2"}
    assert all(math.isfinite(v) and v > 0 for v in logs[10.0].values())
    assert not torch.allclose(trained[0.0], trained[10.0])  # the penalties' gradients reached D


def energy_critic(images: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
    """D(x) = ||x||^2 / 2 per image (+ 10 per attribute switched on): its input gradient is x."""
    logits = images.flatten(1).square().sum(1) / 2
    if labels is not None:
        logits = logits + 10 * labels.sum(1)
    return Scores(logits, images.flatten(1))


def test_r1_and_r2_penalise_d_s_gradient_on_reals_and_on_fakes_with_a_scheduled_gamma():
    real, fake = torch.randn(4, 3, 2, 2), 3 * torch.randn(4, 3, 2, 2)
    on_real, on_fake = real.flatten(1).square().sum(1).mean(), fake.flatten(1).square().sum(1).mean()
    gamma = Cosine(start=2.0, end=0.2, images=100)
    step = Step(net=torch.nn.Identity(), real=real, fake=fake, fake_features=fake, score=energy_critic,
                d_steps=0, images_seen=0, fake_labels=torch.ones(4, 2))  # fmt: skip
    logs: dict[str, torch.Tensor] = {}
    total = penalties([R1(gamma=gamma, every=1), R2(gamma=gamma, every=1)], step, "d", logs)
    torch.testing.assert_close(logs["train/d_r1"], 0.5 * 2.0 * on_real)  # gamma/2 E ||grad D(x)||^2 = E ||x||^2
    torch.testing.assert_close(logs["train/d_r2"], 0.5 * 2.0 * on_fake)  # the same on the fakes
    torch.testing.assert_close(total, logs["train/d_r1"] + logs["train/d_r2"])
    assert logs["train/d_r1_gamma"] == pytest.approx(2.0)
    step.images_seen = 100  # the schedule's end
    torch.testing.assert_close(R2(gamma=gamma, every=1).penalty(step), 0.5 * 0.2 * on_fake)
    # lazily: every 4th D step, times 4; none in between
    torch.testing.assert_close(R2(gamma=1.0, every=4).penalty(step), 4 * 0.5 * on_fake)
    step.d_steps = 1
    assert R2(gamma=1.0, every=4).penalty(step) is None
    with pytest.raises(FacesError, match="R2 gamma must be 0 or more"):
        R2(gamma=-1.0)


def test_r2_scores_the_fakes_with_the_attributes_g_was_asked_for():
    seen = []

    def score(images: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        seen.append((images.detach().clone(), labels))
        return Scores(images.flatten(1).sum(1), images.flatten(1))

    asked = torch.tensor([[1.0, 0.0]])
    step = Step(net=torch.nn.Identity(), real=torch.zeros(1, 3, 2, 2), fake=torch.ones(1, 3, 2, 2),
                fake_features=torch.zeros(1, 1), score=score, d_steps=0, fake_labels=asked)  # fmt: skip
    R2(gamma=1.0, every=1).penalty(step)
    R1(gamma=1.0, every=1).penalty(step)
    (r2_images, r2_labels), (r1_images, r1_labels) = seen
    assert torch.equal(r2_images, step.fake) and r2_labels is asked
    assert torch.equal(r1_images, step.real) and r1_labels is None  # R1: the real images' own (the default)


def test_augmentation_applies_to_a_scheduled_share_of_images():
    torch.manual_seed(0)
    images = torch.rand(256, 3, 8, 8) * 2 - 1
    augment = DiffAugment(policy=["cutout"], probability=Cosine(start=0.0, end=0.5, images=1000)).train()
    assert augment.follow(0) == {"augment_p": 0.0} and torch.equal(augment(images), images)
    assert augment.follow(1000)["augment_p"] == pytest.approx(0.5)
    changed = (augment(images) != images).flatten(1).any(1).float().mean()
    assert 0.35 < changed < 0.65  # about half the images, each augmented whole or not at all
    torch.manual_seed(1)
    chained = cut_out(translate(adjust_color(images), 0.125), 0.5)  # the whole policy on every image, as before
    torch.manual_seed(1)
    assert torch.equal(DiffAugment().train()(images), chained)
    always = DiffAugment(policy=["cutout"]).train()  # the default: every image, as before
    assert always.follow(123) == {} and (always(images) != images).flatten(1).any(1).all()
    assert torch.equal(augment.eval()(images), images)  # never in evaluation


def test_the_ema_half_life_is_in_images_and_the_ramp_keeps_it_within_the_images_seen():
    g = torch.nn.Linear(2, 2)
    assert EMA(g, decay=0.999).beta(batch=64, images_seen=0) == 0.999  # the plain decay, as before
    ramped = EMA(g, decay=0.999, ramp=0.05)
    # decay 0.999 at batch 64: a half-life of 64 * ln 0.5 / ln 0.999 = 44,340 images
    assert ramped.beta(64, images_seen=10**7) == pytest.approx(0.999)
    assert ramped.beta(64, images_seen=6400) == pytest.approx(0.5 ** (64 / 320))  # capped at 5% of 6400
    assert ramped.beta(64, images_seen=0) == 0.0  # the first update copies G
    half = EMA(g, half_life=Cosine(start=0.0, end=10_000, images=1000))
    assert half.beta(100, images_seen=5000) == pytest.approx(0.5 ** (100 / 10_000))
    with pytest.raises(FacesError, match="set one of ema_decay"):
        EMA(g, decay=0.999, half_life=1000.0)


def test_an_ema_with_a_ramp_follows_g_early_instead_of_keeping_its_untrained_start(tmp_path):
    def tiny(**kwargs) -> GAN:
        torch.manual_seed(0)
        generator = DCGANGenerator(latent_dim=8, width=4, image_size=16)
        return GAN(generator, DCGANDiscriminator(width=4, image_size=16), num_fixed_samples=4, **kwargs)

    start = [p.clone() for p in tiny().generator.parameters()]
    distance = {}
    for ramp in (None, 0.05):
        model = tiny(ema_decay=0.999, ema_ramp=ramp)
        trainer = train(tmp_path, model, steps=20)
        gap = [(e - s).norm() / (g - s).norm() for e, g, s in zip(model.generator_ema.parameters(),
               model.generator.parameters(), start, strict=True)]  # fmt: skip
        distance[ramp] = float(torch.stack(gap).mean())  # 0: still the start, 1: where G is
        assert ("train/ema_beta" in trainer.logged_metrics) == (ramp is not None)  # logged when it varies
    assert distance[None] < 0.05 and distance[0.05] > 0.5


def test_the_ema_half_life_counts_the_images_between_its_updates(tmp_path):
    generator = DCGANGenerator(latent_dim=8, width=4, image_size=16)
    model = GAN(generator, DCGANDiscriminator(width=4, image_size=16), num_fixed_samples=4,
                ema_half_life=1000.0, d_steps_per_g_step=2)  # fmt: skip
    trainer = train(tmp_path, model, steps=2)  # G (and its average) updated once, after 2 batches of 8
    assert trainer.logged_metrics["train/ema_beta"] == pytest.approx(0.5 ** (16 / 1000))
    with pytest.raises(FacesError, match="model.ema_ramp caps the EMA's half-life, but there is no EMA"):
        GAN(DCGANGenerator(latent_dim=8, width=4, image_size=16), DCGANDiscriminator(width=4, image_size=16),
            ema_ramp=0.05)  # fmt: skip


def test_the_gan_follows_its_schedules_over_the_images_seen_and_a_resumed_run_continues_them(tmp_path):
    def tiny(**kwargs) -> GAN:
        generator = DCGANGenerator(latent_dim=8, width=4, image_size=16)
        return GAN(generator, DCGANDiscriminator(width=4, image_size=16), num_fixed_samples=4, **kwargs)

    lr, beta2 = Cosine(start=1e-3, end=1e-4, images=64), Cosine(start=0.9, end=0.99, images=64)
    model = tiny(lr=lr, beta2=beta2)
    trainer = train(tmp_path, model, steps=4, enable_checkpointing=True)  # batch 8: 32 images seen
    assert model.images_seen == 32
    for optimizer in trainer.optimizers:  # set for the last iteration, after 24 images
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr(24))
        assert optimizer.param_groups[0]["betas"][1] == pytest.approx(beta2(24))
    assert trainer.logged_metrics["train/lr"] == pytest.approx(lr(24))
    path = tmp_path / "four.ckpt"
    trainer.save_checkpoint(path)
    saved = load_checkpoint(path)  # weights only: the schedules are settings a safe checkpoint holds
    assert saved["images_seen"] == 32 and repr(build(saved["hyper_parameters"]["lr"], path)) == repr(lr)
    for images_seen in (32, None):  # None: a checkpoint of 0.4, which did not count them
        if images_seen is None:
            del saved["images_seen"]
            torch.save(saved, path)
        resumed = tiny(lr=lr, beta2=beta2)
        trainer = train(tmp_path, resumed, steps=5, ckpt_path=path)  # one more iteration, after 32 images
        assert resumed.images_seen == 40 and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr(32))
    with pytest.raises(FacesError, match="model.lr and model.lr_decay both set the learning rate"):
        tiny(lr=1e-3, lr_decay="linear")
    with pytest.raises(FacesError, match=r"model.beta2 must be 0 or more and below 1, got Cosine\(start=0.9, end=1"):
        tiny(beta2=Cosine(0.9, 1.0, 100))
    with pytest.raises(FacesError, match="model.beta2 sets Adam's beta2, but an optimizer has no betas"):
        train(tmp_path, tiny(beta2=0.99, g_optimizer=lambda params: torch.optim.SGD(params, lr=0.01)), steps=1)


def test_a_run_resumed_mid_schedule_ends_with_the_weights_of_the_uninterrupted_run(tmp_path):
    """The whole recipe but the augmentation (which draws from the global RNG, not restored on
    resume): RpGAN, R1 and R2 lazily with a scheduled gamma, scheduled lr, beta2 and EMA half-life
    with a ramp. 32 images at batch 8; stopped after 3 iterations (mid-epoch), resumed to 7."""
    import lightning as L

    def recipe() -> GAN:
        torch.manual_seed(0)
        nets = {"width": 8, "blocks": 1, "expansion": 1, "group_size": 4, "image_size": 16}
        gamma = Cosine(start=0.5, end=0.05, images=48)
        return GAN(R3GANGenerator(latent_dim=8, **nets), R3GANDiscriminator(**nets), num_fixed_samples=4,
                   objective=RelativisticPairing(), d_regularizers=[R1(gamma=gamma, every=2), R2(gamma=gamma, every=2)],
                   lr=Cosine(start=1e-3, end=1e-4, images=48), beta2=Cosine(start=0.9, end=0.99, images=48),
                   ema_half_life=Cosine(start=0.0, end=200.0, images=48), ema_ramp=0.5)  # fmt: skip

    class StopAfter(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == 3:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                trainer.should_stop = True

    uninterrupted = recipe()
    train(tmp_path, uninterrupted, steps=7)
    train(tmp_path, recipe(), steps=7, callbacks=[StopAfter()])
    resumed = recipe()
    train(tmp_path, resumed, steps=7, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.images_seen == uninterrupted.images_seen == 56
    expected = uninterrupted.state_dict()
    for name, tensor in resumed.state_dict().items():  # G, D, the EMA, the genes
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    start = recipe().state_dict()["generator_ema.to_rgb.weight"]
    assert not torch.equal(expected["generator_ema.to_rgb.weight"], start)


def test_g_s_relativistic_loss_reads_the_reals_as_the_d_just_updated_scores_them(tmp_path):
    torch.manual_seed(0)
    generator = DCGANGenerator(latent_dim=8, width=4, image_size=16)
    discriminator = DCGANDiscriminator(width=4, image_size=16)
    model = GAN(generator, discriminator, objective=RelativisticPairing(), num_fixed_samples=4)
    d_before, reals, compared = [p.clone() for p in discriminator.parameters()], [], []
    recorded = model.training_step

    def step(batch, batch_idx):
        reals.append(batch[0])
        return recorded(batch, batch_idx)

    def generator_loss(real_logits, fake_logits):  # in G's update: D has taken its step
        with torch.no_grad():
            compared.append(
                (real_logits, discriminator(reals[-1].contiguous(memory_format=torch.channels_last)).logits)
            )
        return RelativisticPairing.generator_loss(model.objective, real_logits, fake_logits)

    model.training_step, model.objective.generator_loss = step, generator_loss
    train(tmp_path, model, steps=2)
    assert not all(torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters(), strict=True))
    for used, by_updated_d in compared:
        torch.testing.assert_close(used, by_updated_d, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_r3gan_networks_make_and_score_images_at_each_size(size):
    generator, discriminator = R3GANGenerator(width=32, image_size=size), R3GANDiscriminator(width=32, image_size=size)
    images = generator(torch.randn(2, 64))
    scores = discriminator(images)
    assert images.shape == (2, 3, size, size) and scores.logits.shape == (2,) and scores.features.shape == (2, 32)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in generator.modules())
    scores.logits.sum().backward()
    assert all(p.grad is not None for p in discriminator.parameters())


def test_r3gan_blocks_start_as_the_identity_with_fix_up_scaled_branches():
    generator = R3GANGenerator(width=64, image_size=32, group_size=16)  # 4 stages of 2 blocks: L = 8
    stage = generator.stages[0][0]  # the 4x4 stage's residual blocks
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(stage(x), x)  # each branch's last conv starts at zero
    block = stage[0]
    assert not block.back.weight.any()
    gain = math.sqrt(2 / (1 + 0.2**2)) * 8 ** (-1 / 4)  # He for leaky ReLU 0.2, times L^(-1/4)
    assert block.expand.weight.std().item() == pytest.approx(gain / math.sqrt(64), rel=0.1)  # fan-in 64
    assert block.mix.weight.std().item() == pytest.approx(gain / math.sqrt(16 * 9), rel=0.1)  # a group's 16 x 3x3
    with pytest.raises(FacesError, match="image_size 48 is not supported by the R3GAN networks"):
        R3GANGenerator(image_size=48)
    with pytest.raises(FacesError, match="group_size 12 does not divide"):
        R3GANGenerator(width=32, group_size=12)


def test_r3gan_resampling_is_bilinear_up_and_box_down_away_from_the_border():
    up = R3GANGenerator(width=8, image_size=32).stages[1][0]  # the [1, 3, 3, 1] filter, 4 -> 8 px
    down = R3GANDiscriminator(width=8, image_size=32).stages[0][1]
    x = torch.randn(1, 8, 8, 8)
    bilinear = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])
    ramp = torch.arange(8.0).expand(1, 8, 8, 8)  # a smooth image: the filter leaves its pooled value
    pooled = torch.nn.functional.avg_pool2d(ramp, 2)
    torch.testing.assert_close(down(ramp)[..., 1:-1, 1:-1], pooled[..., 1:-1, 1:-1])


def test_conditional_r3gan_networks_use_the_attributes():
    names = ["Eyeglasses", "Smiling"]
    torch.manual_seed(0)
    generator = R3GANGenerator(width=32, image_size=32, attributes=names)
    discriminator = R3GANDiscriminator(width=32, image_size=32, attributes=names)
    for block in generator.modules():  # leave the zero start: the attributes must reach the image
        if isinstance(block, torch.nn.Conv2d) and block.bias is None and block.kernel_size == (1, 1):
            torch.nn.init.normal_(block.weight, 0, 0.1)
    z = torch.randn(2, 64)
    on, off = torch.ones(2, 2), torch.zeros(2, 2)
    assert not torch.allclose(generator(z, on), generator(z, off))
    images = generator(z, on)
    assert not torch.allclose(discriminator(images, on).logits, discriminator(images, off).logits)
    with pytest.raises(FacesError, match="conditioned on 2 attributes"):
        generator(z)


def test_r3gan_config_trains_logs_its_schedules_and_conditions(fake_celeba, tmp_path):
    runs = tmp_path / "runs"
    args = [
        *celeba_args(fake_celeba, runs, config="r3gan.yaml"),
        "--trainer.max_steps",
        "3",
        "--trainer.log_every_n_steps",
        "1",
    ]
    first = run_cli(["fit", *args], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = runs / "r3gan" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["iteration"] == 3 and saved["images_seen"] == 12  # batch 4
    rebuilt = GAN.from_checkpoint(last)  # schedules inside regularizers are rebuilt from safe settings
    assert repr(rebuilt.d_regularizers[1].gamma) == "Cosine(start=2, end=0.2, images=5000000)"
    assert rebuilt.images_seen == 12 and rebuilt.ema.ramp == 0.05
    metrics = (runs / "r3gan" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train/lr", "train/beta2", "train/augment_p", "train/d_r1_gamma", "train/d_r2", "train/ema_beta"):
        assert name in metrics, name
    conditional = ["--data.attributes", "[Eyeglasses, Smiling]", "--trainer.logger.init_args.name", "r3gan_c"]
    result = run_cli(["fit", *args, *conditional], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(runs / "r3gan_c" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["genes.attribute_pool"].shape[1] == 2 and state["generator.embed.weight"].shape[1] == 2
    assert state["discriminator.attribute_head.layer.weight"].shape[1] == 2  # the projection D


def test_r3gan_widths_can_be_set_per_resolution():
    generator = R3GANGenerator(widths=[64, 32, 16, 8], group_size=8, image_size=32)
    discriminator = R3GANDiscriminator(widths=[64, 32, 16, 8], group_size=8, image_size=32)
    assert generator.to_rgb.in_channels == 8 and discriminator.from_rgb.out_channels == 8
    assert generator.basis.shape == (64, 4, 4) and discriminator.head.in_features == 64
    assert discriminator(generator(torch.randn(2, 64))).logits.shape == (2,)
    with pytest.raises(FacesError, match=r"widths needs one channel count per resolution from 4 to 32 px \(4\), got 3"):
        R3GANGenerator(widths=[64, 32, 16], image_size=32)


def test_the_linear_stem_gives_z_every_channel_and_position_of_the_4x4_features():
    nets = dict(widths=[8, 8, 8, 8], blocks=1, expansion=1, group_size=8, image_size=32)
    z = torch.randn(100, 64)
    spans = {}
    for stem in ("basis", "linear"):
        generator = R3GANGenerator(stem=stem, **nets)
        with torch.no_grad():
            features = generator.stem(z)  # (100, 8, 4, 4); the 4x4 blocks start as the identity
            assert generator(z).shape == (100, 3, 32, 32)
            if stem == "linear":  # the basis is the features' mean: what z = 0 makes
                torch.testing.assert_close(generator.stem(torch.zeros(1, 64))[0], generator.basis)
        spans[stem] = torch.linalg.matrix_rank(features.flatten(1) - features.flatten(1).mean(0)).item()
    assert spans == {"basis": 8, "linear": 64}  # one number per channel, against all of z
    with pytest.raises(FacesError, match="stem must be 'basis' or 'linear', got 'conv'"):
        R3GANGenerator(stem="conv", **nets)
