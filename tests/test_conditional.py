"""Conditional faces: attributes chosen by name, conditional networks, the GAN's use of them."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_faces.callbacks import SampleGrid
from lightning_faces.data import CELEBA_ATTRIBUTES, ImageFolderDataModule, SyntheticFacesDataModule
from lightning_faces.data.attributes import parse_attribute_values, select_attributes, switch_on
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator, ResNetGenerator
from lightning_faces.objectives import AttributeLoss
from tests.test_module import train

NAMES = ["Eyeglasses", "Blond_Hair", "Smiling"]


def conditional_gan(conditioning: str = "auxiliary", names=NAMES, **kwargs) -> GAN:
    generator = DCGANGenerator(latent_dim=8, width=4, image_size=16, attributes=names)
    discriminator = DCGANDiscriminator(width=4, image_size=16, attributes=names, conditioning=conditioning)
    return GAN(generator, discriminator, **{"num_fixed_samples": 4, **kwargs})


def test_attributes_are_chosen_by_celeba_name_and_unknown_names_list_the_valid_ones():
    assert select_attributes("all") == tuple(CELEBA_ATTRIBUTES)
    assert select_attributes(["Smiling", "Male"]) == ("Smiling", "Male")  # the order given
    assert select_attributes(None) == select_attributes([]) == ()
    with pytest.raises(FacesError, match=r"unknown attribute Glasses; CelebA's are 5_o_Clock_Shadow .* Young"):
        select_attributes(["Glasses"])
    with pytest.raises(FacesError, match="more than once"):
        select_attributes(["Male", "Male"])


def test_the_datamodule_hands_on_only_the_chosen_columns_in_their_order():
    data = SyntheticFacesDataModule(image_size=16, attributes=["Smiling", "Bald"])
    rows = torch.zeros(2, 40)
    rows[0, CELEBA_ATTRIBUTES.index("Bald")] = 1
    rows[1, CELEBA_ATTRIBUTES.index("Smiling")] = 1
    _, attributes = data.on_after_batch_transfer((torch.zeros(2, 3, 16, 16, dtype=torch.uint8), rows), 0)
    assert attributes.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(FacesError, match="ImageFolderDataModule images have no attribute labels"):
        ImageFolderDataModule("somewhere", attributes=["Male"])


def test_predict_attributes_are_parsed_against_the_models_attributes():
    assert parse_attribute_values("Eyeglasses=1, Smiling=0", NAMES) == {"Eyeglasses": 1.0, "Smiling": 0.0}
    with pytest.raises(FacesError, match="not trained on attribute 'Male'; its attributes are Eyeglasses"):
        parse_attribute_values("Male=1", NAMES)
    with pytest.raises(FacesError, match="not NAME=0 or NAME=1"):
        parse_attribute_values("Eyeglasses=yes", NAMES)


def test_switching_a_hair_colour_on_switches_the_others_off():
    names = ["Black_Hair", "Blond_Hair", "Smiling"]
    rows = switch_on(torch.tensor([[0.0, 1.0, 1.0]]), names, "Black_Hair")
    assert rows.tolist() == [[1.0, 0.0, 1.0]]


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
@pytest.mark.parametrize("conditioning", ["projection", "auxiliary"])
def test_conditional_networks_read_the_attributes(family, conditioning):
    torch.manual_seed(0)
    G, D = (DCGANGenerator, DCGANDiscriminator) if family == "dcgan" else (ResNetGenerator, ResNetDiscriminator)
    g = G(latent_dim=8, width=4, image_size=16, attributes=NAMES).eval()
    d = D(width=4, image_size=16, attributes=NAMES, conditioning=conditioning).eval()  # fixed SN vectors
    z, on, off = torch.randn(2, 8), torch.ones(2, 3), torch.zeros(2, 3)
    assert not torch.allclose(g(z, on), g(z, off))  # the attributes reach the image
    images = g(z, on)
    if conditioning == "projection":
        assert d(images, on).attribute_logits is None
        assert not torch.allclose(d(images, on).logits, d(images, off).logits)
    else:
        scores = d(images, on)
        assert scores.attribute_logits.shape == (2, 3)
        torch.testing.assert_close(scores.logits, d(images, off).logits)  # real/fake ignores them
    with pytest.raises(FacesError, match="conditioned on 3 attributes .* got none"):
        g(z)


def test_g_and_d_must_share_attributes_and_attribute_loss_needs_a_classifier_head():
    generator = DCGANGenerator(latent_dim=8, width=4, image_size=16, attributes=NAMES)
    with pytest.raises(FacesError, match="the discriminator on \\['Eyeglasses'\\]"):
        GAN(generator, DCGANDiscriminator(width=4, image_size=16, attributes=["Eyeglasses"]))
    with pytest.raises(FacesError, match="attribute_loss is set, but the discriminator has no attribute classifier"):
        conditional_gan("projection", attribute_loss=AttributeLoss())
    assert isinstance(conditional_gan("auxiliary").attribute_loss, AttributeLoss)  # the default


def test_fake_attributes_are_the_real_rows_shuffled():
    model = conditional_gan()
    real = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    fake = model.fake_attributes(real, slot=0)
    assert sorted(map(tuple, fake.tolist())) == sorted(map(tuple, real.tolist()))  # the data's own rows
    assert not torch.equal(model.fake_attributes(real, slot=1), fake) or not torch.equal(fake, real)


def test_a_conditional_gan_trains_logs_its_attribute_losses_and_keeps_real_rows(tmp_path):
    model = conditional_gan()
    data = SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8, attributes=NAMES)
    trainer = train(tmp_path, model, steps=3, callbacks=[SampleGrid(min_cell_size=16)], data=data)
    assert {"train/d_attribute_loss", "train/g_attribute_loss"} <= set(trainer.callback_metrics)
    # the pool holds real rows of the training data (drawn faces: at most one of these per face is rare)
    pool = model.attribute_pool
    assert pool.sum() > 0 and set(pool.unique().tolist()) <= {0.0, 1.0}
    rows = set(map(tuple, data.train_set.tensors[1][:, [CELEBA_ATTRIBUTES.index(n) for n in NAMES]].tolist()))
    assert set(map(tuple, pool.tolist())) <= rows
    grid = Image.open(tmp_path / "samples" / "attributes_step_0000003.png")
    # 4 rows of (as drawn + 3 attributes) cells of 16 px with 2 px padding, under a 40 px header
    assert grid.size == (4 * 18 + 2, 40 + 4 * 18 + 2)
