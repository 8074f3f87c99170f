"""DiffAugment: each transform does what its name says, gradients pass, evaluation is untouched."""

import pytest
import torch

from lightning_faces.augment import DiffAugment, adjust_color, cut_out, translate
from lightning_faces.errors import FacesError


def test_translation_moves_the_content_and_fills_with_zeros():
    torch.manual_seed(0)
    image = torch.zeros(64, 1, 8, 8)
    image[:, :, 4, 4] = 1.0  # one lit pixel
    moved = translate(image, ratio=0.25)  # shifts of -2..2 pixels
    lit = moved.flatten(1).argmax(1)
    rows, cols = lit // 8 - 4, lit % 8 - 4
    assert rows.abs().max() <= 2 and cols.abs().max() <= 2 and (rows != 0).any() and (cols != 0).any()
    assert torch.equal(moved.sum(dim=(1, 2, 3)), torch.ones(64))  # moved, not blurred or duplicated
    edge = torch.ones(64, 1, 8, 8)
    shifted = translate(edge, ratio=0.25)
    assert (shifted == 0).any() and set(shifted.unique().tolist()) <= {0.0, 1.0}  # zeros come in


def test_cutout_zeroes_one_square_of_the_given_size():
    torch.manual_seed(0)
    out = cut_out(torch.ones(200, 3, 16, 16), ratio=0.5)
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.max() == 64 and (zeros == 64).float().mean() > 0.2  # 8x8 when fully inside
    assert (zeros > 0).all()  # every image loses some of its square
    assert torch.equal(out[:, 0], out[:, 1])  # the same square in every channel


def test_color_changes_each_image_differently_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 4, 4, requires_grad=True)
    y = adjust_color(x)
    shifts = (y - x).mean(dim=(1, 2, 3))
    assert shifts.std() > 0.05  # a brightness of its own per image
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaugment_augments_in_training_only_and_checks_its_policy():
    augment = DiffAugment()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = augment(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    out.sum().backward()
    assert x.grad is not None  # G learns through the augmentation
    augment.eval()
    assert augment(x) is x
    with pytest.raises(FacesError, match="DiffAugment policy has \\['blur'\\]"):
        DiffAugment(policy=["color", "blur"])
