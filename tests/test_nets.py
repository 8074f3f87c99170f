import pytest
import torch
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.nets import DCGANDiscriminator as Discriminator
from lightning_faces.nets import DCGANGenerator as Generator
from lightning_faces.nets import ResNetDiscriminator, ResNetGenerator


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_generator_and_discriminator_shapes_at_every_supported_size(image_size):
    g, d = Generator(latent_dim=16, width=8, image_size=image_size), Discriminator(width=8, image_size=image_size)
    images = g(torch.randn(3, 16))
    assert images.shape == (3, 3, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    logits, features, _ = d(images)
    assert logits.shape == (3,)
    assert features.shape == (3, 8 * image_size // 8, 4, 4)  # last hidden block: 4x4


def test_dcgan_64_has_the_papers_parameter_counts():
    # the widely reproduced DCGAN at 64x64: G 3,576,704 and D 2,765,568 parameters
    g, d = Generator(100, 64, 64), Discriminator(64, 64)
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568


def test_dcgan_architecture_rules():
    g, d = Generator(image_size=64), Discriminator(image_size=64)
    for net in (g, d):
        kinds = {type(m) for m in net.modules()}
        assert nn.Linear not in kinds and nn.MaxPool2d not in kinds and nn.AvgPool2d not in kinds
    assert any(isinstance(m, nn.Tanh) for m in g.modules())
    assert any(isinstance(m, nn.LeakyReLU) for m in d.modules())
    assert isinstance(d.blocks[0][1], nn.LeakyReLU)  # no normalization on D's input layer
    conv_weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert conv_weights.mean().abs().item() < 1e-3


@pytest.mark.parametrize("bad_size", [0, 8, 48, 100])
def test_unsupported_image_size_is_refused(bad_size):
    with pytest.raises(FacesError, match=f"image_size {bad_size} is not supported"):
        Generator(image_size=bad_size)


def test_feature_layer_picks_the_block_and_checks_its_range():
    d = Discriminator(width=4, image_size=32, feature_layer=0)
    features = d(torch.randn(2, 3, 32, 32)).features
    assert features.shape == (2, 4, 16, 16)
    with pytest.raises(FacesError, match="feature_layer 7 is out of range"):
        Discriminator(width=4, image_size=32, feature_layer=7)


def test_virtual_batch_norm_output_does_not_depend_on_batch_companions():
    torch.manual_seed(0)
    z = torch.randn(3, 16)
    vbn = Generator(16, 8, 32, norm="virtual")
    vbn.set_reference(torch.randn(10, 16))
    with torch.no_grad():
        first = vbn(z[[0, 1]])[0]
        second = vbn(z[[0, 2]])[0]
    torch.testing.assert_close(first, second)

    bn = Generator(16, 8, 32, norm="batch")  # plain batch norm: the companion changes the output
    with torch.no_grad():
        assert not torch.allclose(bn(z[[0, 1]])[0], bn(z[[0, 2]])[0])


def test_virtual_batch_norm_reference_is_fixed_and_used():
    d = Discriminator(width=4, image_size=16, norm="virtual")
    reference = torch.randn(6, 3, 16, 16)
    d.set_reference(reference)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = d(x)[0]
        d(torch.randn(5, 3, 16, 16) * 10)  # another batch leaves the reference alone
        torch.testing.assert_close(d(x)[0], before)
        torch.testing.assert_close(d.reference, reference)
        d.set_reference(reference * 3 + 1)  # a different reference normalizes differently
        assert not torch.allclose(d(x)[0], before)
    assert "reference" in d.state_dict()  # saved with the weights


def test_virtual_batch_norm_without_reference_says_so():
    d = Discriminator(width=4, image_size=16, norm="virtual")
    with pytest.raises(RuntimeError, match="reference batch"):
        d(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_resnet_networks_keep_the_contract_at_every_size(image_size):
    g, d = ResNetGenerator(latent_dim=16, width=4, image_size=image_size), ResNetDiscriminator(4, image_size)
    images = g(torch.randn(3, 16))
    assert images.shape == (3, 3, image_size, image_size) and images.abs().max() <= 1
    logits, features, _ = d(images)
    assert logits.shape == (3,) and features.shape[0] == 3 and features.dim() == 2  # pooled features
    assert g.latent_dim == 16 and g.image_size == image_size


def test_sngan_64_has_mimicrys_generator_layout_and_spectral_norm_in_every_d_layer():
    g, d = ResNetGenerator(128, 64, 64), ResNetDiscriminator(64, 64)
    # Mimicry's SNGAN-64 G: 4x4 at 1024 channels, blocks 1024 -> 512 -> 256 -> 128 -> 64
    assert g.project.out_features == 16 * 1024
    assert [b.conv1.out_channels for b in g.blocks] == [512, 256, 128, 64]
    weighted = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted and all(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in weighted)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())  # spectral norm instead of BN in D


def test_spectral_norm_keeps_each_d_layer_near_unit_spectral_norm():
    torch.manual_seed(0)
    d = ResNetDiscriminator(8, 32)
    for _ in range(30):  # power iteration converges over forward passes in training mode
        d(torch.randn(2, 3, 32, 32))
    d.eval()
    for m in d.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item()
            assert sigma == pytest.approx(1.0, rel=0.05)
