"""The progressive networks: levels, fade-in, ProGAN's layers, and a few training steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from lightning_faces.data import SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from lightning_faces.nets.progressive import (
    EqualizedConv2d,
    MinibatchStdDev,
    ProgressiveDiscriminator,
    ProgressiveGenerator,
    pixel_norm,
)
from tests.test_module import train


def networks(**kwargs):
    torch.manual_seed(0)
    return (
        ProgressiveGenerator(latent_dim=8, width=4, image_size=32, max_channels=16, **kwargs),
        ProgressiveDiscriminator(width=4, image_size=32, max_channels=16),
    )


def test_each_level_works_at_its_resolution_and_the_default_is_the_final_one():
    g, d = networks()
    z = torch.randn(6, 8)
    assert (g.resolution, d.resolution) == (32, 32) and g(z).shape == (6, 3, 32, 32)
    for level, side in enumerate([4, 8, 16, 32]):
        g.grow(level)
        d.grow(level)
        images = g(z)
        assert images.shape == (6, 3, side, side) and d(images).logits.shape == (6,)
    with pytest.raises(FacesError, match="D is at 32x32"):
        d(torch.zeros(2, 3, 16, 16))
    with pytest.raises(FacesError, match="level 4 is out of range"):
        g.grow(4)
    with pytest.raises(FacesError, match="alpha must be in"):
        g.grow(0, 0.5)


def test_fade_in_starts_from_the_level_below_and_ends_at_the_new_block():
    g, d = networks()
    z = torch.randn(4, 8)
    g.grow(1)
    below = g(z)  # 8x8
    g.grow(2, alpha=0.0)
    assert torch.allclose(g(z), F.interpolate(below, scale_factor=2, mode="nearest"), atol=1e-6)
    g.grow(2, alpha=1.0)
    new = g(z)
    g.grow(2, alpha=0.25)
    expected = 0.75 * F.interpolate(below, scale_factor=2, mode="nearest") + 0.25 * new
    assert torch.allclose(g(z), expected, atol=1e-5)
    # D: at alpha 0 a 16x16 image is read as the level below reads it halved
    images = torch.randn(4, 3, 16, 16)
    d.grow(1)
    halved = d(F.avg_pool2d(images, 2)).logits
    d.grow(2, alpha=0.0)
    assert torch.allclose(d(images).logits, halved, atol=1e-5)
    d.grow(2, alpha=1.0)
    assert not torch.allclose(d(images).logits, halved, atol=1e-3)


def test_the_parameters_and_state_dict_are_the_same_at_every_level():
    g, _ = networks()
    keys = set(g.state_dict())
    g.grow(1, 0.5)
    state = g.state_dict()
    assert set(state) == keys and int(state["level"]) == 1 and float(state["alpha"]) == 0.5
    fresh, _ = networks()
    fresh.load_state_dict(state)  # a checkpoint mid-fade restores the level and alpha with the weights
    assert (int(fresh.level), float(fresh.alpha), fresh.resolution) == (1, 0.5, 8)


def test_blocks_above_the_level_get_no_gradient():
    g, d = networks()
    g.grow(1)
    d.grow(1)
    d(g(torch.randn(4, 8))).logits.sum().backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        # at level 1 with alpha 1: level 1's block and RGB layers; the 4x4 RGB layers only fade
        unused = name.startswith(("blocks.1.", "blocks.2.", "to_rgb.0.", "to_rgb.2.", "to_rgb.3."))
        unused = unused or name.startswith(("from_rgb.0.", "from_rgb.2.", "from_rgb.3."))
        assert (p.grad is None) == unused, name


def test_equalized_layers_draw_unit_weights_and_scale_them_at_run_time():
    conv = EqualizedConv2d(64, 32, 3)
    assert abs(conv.weight.std().item() - 1) < 0.05
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(64 * 9))
    x = torch.randn(16, 64, 8, 8)
    # He's gain keeps the second moment through a ReLU: E[relu(y)^2] ~ E[x^2]
    assert F.relu(conv(x)).pow(2).mean().item() == pytest.approx(1.0, rel=0.2)


def test_pixel_norm_gives_each_pixel_unit_rms():
    x = torch.randn(2, 16, 4, 4) * 7
    assert torch.allclose(pixel_norm(x).pow(2).mean(dim=1), torch.ones(2, 4, 4), atol=1e-4)


def test_minibatch_stddev_sees_variety_within_each_group():
    layer = MinibatchStdDev(group_size=2)
    same = torch.ones(4, 3, 2, 2)
    assert torch.allclose(layer(same)[:, 3], torch.full((4, 2, 2), 1e-4), atol=1e-4)
    x = torch.zeros(4, 1, 1, 1)
    x[0], x[2] = 1.0, 3.0  # groups pair images i and i + B/G: (0, 2) and (1, 3)
    out = layer(x)[:, 1, 0, 0]
    assert out[0] == out[2] == pytest.approx(1.0, abs=1e-3) and out[1] == out[3] == pytest.approx(0.0, abs=1e-3)


def test_conditional_progressive_networks_take_attributes():
    names = ["Eyeglasses", "Smiling"]
    g = ProgressiveGenerator(latent_dim=8, width=4, image_size=16, max_channels=8, attributes=names)
    d = ProgressiveDiscriminator(width=4, image_size=16, max_channels=8, attributes=names, conditioning="auxiliary")
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = d(g(torch.randn(2, 8), labels), labels)
    assert scores.attribute_logits.shape == (2, 2)


def test_a_gan_of_progressive_networks_trains_at_a_fixed_level(tmp_path):
    g, d = networks()
    g.grow(2)
    d.grow(2)
    model = GAN(g, d)
    data = SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8)
    before = [p.detach().clone() for p in g.parameters()]
    train(tmp_path, model, steps=3, data=data)
    changed = [not torch.equal(a, b) for a, b in zip(before, g.parameters(), strict=True)]
    assert any(changed) and model.iteration == 3
