import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from lightning_faces.cli import make_cli
from lightning_faces.data import (
    CELEBA_ATTRIBUTES,
    CelebA,
    CelebADataModule,
    DrawnFaces,
    FaceDataModule,
    ImageFolder,
    ImageFolderDataModule,
)
from lightning_faces.data.images import crop_and_resize
from lightning_faces.data.synthetic import SyntheticFacesDataModule, render_faces
from lightning_faces.errors import FacesError
from tests.conftest import REPO, face_like_image, write_celeba


@pytest.mark.parametrize(("split", "count"), [("train", 16), ("valid", 4), ("test", 4), ("all", 24)])
def test_celeba_splits_follow_the_partition_file(fake_celeba, split, count):
    assert len(CelebA(fake_celeba, split, 16, 0.79)) == count


def test_celeba_items_are_uint8_images_with_their_40_attributes(fake_celeba):
    dataset = CelebA(fake_celeba, "valid", 32, 0.79)
    image, attributes = dataset[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    lines = (fake_celeba / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    row = next(line for line in lines if line.startswith(dataset.filenames[1])).split()[1:]
    assert attributes.tolist() == [1.0 if v == "1" else 0.0 for v in row]
    assert len(attributes) == len(CELEBA_ATTRIBUTES) == 40


def test_crop_is_relative_so_half_size_images_get_the_same_framing():
    full = face_like_image(3, 178, 218)
    half = full.resize((89, 109), Image.Resampling.LANCZOS)
    a = crop_and_resize(full, 64, 0.79).astype(float)
    b = crop_and_resize(half, 64, 0.79).astype(float)
    assert np.abs(a - b).mean() < 3.0  # same framing: only resampling differences remain
    shifted = crop_and_resize(full, 64, 0.6).astype(float)  # a different crop really differs
    assert np.abs(a - shifted).mean() > 10


def test_missing_celeba_names_the_path_the_files_and_how_to_get_them(tmp_path):
    with pytest.raises(FacesError) as error:
        CelebADataModule(data_dir=str(tmp_path)).prepare_data()
    message = str(error.value)
    assert str(tmp_path / "celeba") in message
    for expected in ("img_align_celeba/", "list_eval_partition.txt", "list_attr_celeba.txt", "download"):
        assert expected in message


@pytest.mark.parametrize("crop", [0.0, 1.5])
def test_crop_outside_zero_one_is_refused(tmp_path, crop):
    for module in (CelebADataModule, ImageFolderDataModule):
        with pytest.raises(FacesError, match="crop must be a fraction"):
            module(data_dir=str(tmp_path), crop=crop)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "celeba.zip"
    file.write_bytes(b"PK")
    with pytest.raises(FacesError, match="is a file, not a folder"):
        CelebADataModule(data_dir=str(file)).prepare_data()


def test_failed_download_gives_a_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets

    class QuotaExceeded:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets, "CelebA", QuotaExceeded)
    with pytest.raises(FacesError, match="downloading CelebA into .* failed .*Too many users.*by hand"):
        CelebADataModule(data_dir=str(tmp_path), download=True).prepare_data()


def test_unreadable_image_error_names_the_file(fake_celeba):
    broken = fake_celeba / "celeba" / "img_align_celeba" / "000002.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    dataset = CelebA(fake_celeba, "train", 16, 0.79)
    with pytest.raises(FacesError, match="cannot read image .*000002.jpg"):
        dataset[1]


def test_images_missing_from_the_folder_are_reported_before_training(fake_celeba):
    (fake_celeba / "celeba" / "img_align_celeba" / "000005.jpg").unlink()
    module = CelebADataModule(data_dir=str(fake_celeba), batch_size=2, num_workers=0)
    with pytest.raises(FacesError, match=r"1 of 16 images .* missing .*first: 000005.jpg"):
        module.setup("fit")


def test_batch_larger_than_the_dataset_is_refused(fake_celeba):
    module = CelebADataModule(data_dir=str(fake_celeba), batch_size=64, num_workers=0)
    with pytest.raises(FacesError, match="batch_size 64 is larger than the training set"):
        module.setup("fit")


def test_samples_per_epoch_trains_each_epoch_on_a_fresh_subset(fake_celeba):
    module = CelebADataModule(
        data_dir=str(fake_celeba), image_size=16, batch_size=2, num_workers=0, samples_per_epoch=6
    )
    module.setup("fit")
    loader = module.train_dataloader()
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)  # as Lightning does at the start of each epoch
        epochs.append(torch.cat([images.flatten(1) for images, _ in loader]))
    assert all(len(epoch) == 6 for epoch in epochs)  # 6 of the 16 images per epoch
    # not the same 6 images each time (as sets: the same images in a new order would not count)
    assert len({frozenset(e.sum(1).tolist()) for e in epochs}) > 1


def test_batches_become_floats_in_minus_one_one_and_flip_only_in_training(fake_celeba):
    module = CelebADataModule(data_dir=str(fake_celeba), image_size=16, batch_size=16, num_workers=0, flip=True)

    class FakeTrainer:
        predicting, training = False, True
        global_step, global_rank, current_epoch = 0, 0, 0

    module.trainer = FakeTrainer()
    images = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(64, 3, 1, 2).contiguous()
    out, _ = module.on_after_batch_transfer((images, torch.zeros(64, 40)), 0)
    assert out.dtype == torch.float32 and out.min() == -1 and out.max() == 1
    flipped = (out[:, 0, 0, 0] == 1).float().mean()
    assert 0.2 < flipped < 0.8  # about half the images mirrored
    FakeTrainer.training = False
    out, _ = module.on_after_batch_transfer((images, torch.zeros(64, 40)), 0)
    assert (out[:, 0, 0, 0] == -1).all()  # no flips outside training


def test_celeba_without_valid_rows_skips_validation_with_a_warning(tmp_path):
    root = write_celeba(tmp_path / "d", splits=(8, 0, 0))
    module = CelebADataModule(data_dir=str(root), image_size=16, batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match="no images, so validation is skipped"):
        module.setup("fit")
    assert module.val_dataloader() == []
    with pytest.raises(FacesError, match="no validation split with images"):
        CelebADataModule(data_dir=str(root), image_size=16, batch_size=2, num_workers=0).setup("validate")
    with pytest.raises(FacesError, match="test split has no images"):
        module.setup("test")
    with pytest.raises(FacesError, match="CelebA split 'valid' under .* has no images to compare against"):
        module.real_images("valid")  # FID's real side: refused, even with the empty split set up


def test_testing_on_an_image_folder_says_it_has_no_test_split(tmp_path):
    for index in range(4):
        (tmp_path / "faces").mkdir(exist_ok=True)
        face_like_image(index).save(tmp_path / "faces" / f"{index}.png")
    module = ImageFolderDataModule(str(tmp_path / "faces"), image_size=16, batch_size=2, num_workers=0,
                                   prepared_dir=str(tmp_path / "prepared"))  # fmt: skip
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    trainer.state.fn = TrainerFn.TESTING
    module.trainer = trainer
    module.prepare_data()  # nothing to prepare for test: a folder has no test split
    assert not (tmp_path / "prepared").exists()
    with pytest.raises(FacesError, match="test split has no images"):
        module.setup("test")


def test_plain_image_folder_is_a_dataset(tmp_path):
    for index in range(5):
        folder = tmp_path / "faces" / f"part{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        face_like_image(index, 40, 40).save(folder / f"{index}.png")
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    dataset = ImageFolder(tmp_path / "faces", 16, 1.0)
    assert len(dataset) == 5
    image, attributes = dataset[0]
    assert image.shape == (3, 16, 16) and attributes.numel() == 0
    module = ImageFolderDataModule(data_dir=str(tmp_path / "faces"), image_size=16, batch_size=2, num_workers=0)
    module.setup("fit")
    assert len(module.train_dataloader()) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacesError, match="no images"):
        ImageFolder(tmp_path / "empty", 16, 1.0)
    with pytest.raises(FacesError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere", 16, 1.0)


def test_synthetic_faces_are_reproducible_and_varied():
    a_images, a_attributes = render_faces(6, 32, seed=1)
    b_images, _ = render_faces(6, 32, seed=1)
    c_images, _ = render_faces(6, 32, seed=2)
    assert torch.equal(a_images, b_images)
    assert not torch.equal(a_images, c_images)
    assert a_images.shape == (6, 3, 32, 32) and a_images.dtype == torch.uint8
    assert a_images.float().std(0).mean() > 20  # the faces differ from each other
    assert a_attributes.shape == (6, 40) and a_attributes.sum() > 0
    hair = [CELEBA_ATTRIBUTES.index(n) for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald")]
    assert (a_attributes[:, hair].sum(1) == 1).all()  # exactly one hair colour (or bald) each


def test_synthetic_validation_faces_are_not_training_faces():
    module = SyntheticFacesDataModule(num_images=8, num_val_images=4, image_size=16, batch_size=4)
    module.setup("fit")
    train = module.train_set.tensors[0].flatten(1).float()
    val = module.val_set.tensors[0].flatten(1).float()
    assert torch.cdist(val, train).min() > 0


def test_loader_workers_default_to_the_cpus_slurm_gave_the_task(monkeypatch, tmp_path):
    from lightning_faces.data import CelebADataModule

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert CelebADataModule(data_dir=str(tmp_path), prepared=False).num_workers == 3
    prepared = CelebADataModule(data_dir=str(tmp_path))
    assert prepared.num_workers == 0 and prepared.decode_workers == 3  # a prepared batch is one copy
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")
    assert CelebADataModule(data_dir=str(tmp_path), prepared=False).num_workers == 8  # capped
    assert CelebADataModule(data_dir=str(tmp_path), num_workers=1).num_workers == 1


def test_images_the_listings_leave_out_are_counted_in_one_line_and_bad_disagreement_is_refused(
    fake_celeba, monkeypatch
):
    import lightning_faces.data.celeba as data

    folder = fake_celeba / "celeba"
    face_like_image(99, 44, 54).save(folder / "img_align_celeba" / "999999.jpg")  # no attribute row
    partition = (folder / "list_eval_partition.txt").read_text().splitlines()
    (folder / "list_eval_partition.txt").write_text("\n".join(partition[1:]) + "\n")  # 000001 has no split
    with pytest.raises(FacesError, match=r"disagree: 1 image files .* no row in list_attr_celeba.txt and 1 listed"):
        CelebA(fake_celeba, "train", 16, 0.79)  # 2 of 25 images: too many to be an accident
    monkeypatch.setattr(data, "BAD_LISTING", 0.1)
    with pytest.warns(UserWarning, match=r"1 image files .* and 1 listed images have no row in list_eval_partition"):
        dataset = CelebA(fake_celeba, "train", 16, 0.79)
    assert len(dataset) == 15 and "000001.jpg" not in dataset.filenames


def test_an_attribute_list_whose_header_count_disagrees_is_refused_or_reported(fake_celeba, monkeypatch):
    import lightning_faces.data.celeba as data

    listing = fake_celeba / "celeba" / "list_attr_celeba.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(["30", *lines[1:]]) + "\n")  # says 30, lists 24
    with pytest.raises(FacesError, match="says 30 images but lists 24: the file is cut short"):
        CelebA(fake_celeba, "all", 16, 0.79)
    monkeypatch.setattr(data, "BAD_LISTING", 0.5)
    with pytest.warns(UserWarning, match="says 30 images but lists 24: using the 24 listed"):
        assert len(CelebA(fake_celeba, "all", 16, 0.79)) == 24


@pytest.mark.parametrize("size", [(160, 120), (40, 30)])
def test_landscape_images_are_cut_from_their_shorter_side(tmp_path, size):
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :] = (200, 0, 0)  # red margins left and right
    left = (width - height) // 2
    image[:, left : left + height] = (0, 0, 255)  # the centred square: blue
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(image).save(folder / "wide.png")
    face, _ = ImageFolder(folder, 16, 1.0)[0]
    assert face.shape == (3, 16, 16)
    assert face[2].float().mean() > 250 and face[0].float().mean() < 5  # all of the square, none of the margins


def _png_16bit_rgb(path, array: np.ndarray) -> None:
    """Writes uint16 (H, W, 3) as a 48-bit PNG by hand (PIL writes 16-bit greyscale only)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _faces_in_every_mode(folder):
    """One face saved in each mode PIL opens, in a format that keeps it; returns
    {file name: (PIL mode when opened, the 8-bit RGB pixels expected, tolerance)}."""
    folder.mkdir()
    original = face_like_image(7, 24, 24).quantize(200).convert("RGB")  # few colours: a palette holds it exactly
    rgb = np.asarray(original)
    grey = np.asarray(original.convert("L"))
    grey_rgb = np.repeat(grey[..., None], 3, axis=2)
    opaque = Image.new("L", original.size, 255)
    expected = {}

    def save(name, image, mode, pixels, tolerance=1):
        image.save(folder / name)
        expected[name] = (mode, pixels, tolerance)

    save("rgb.png", original, "RGB", rgb, 0)
    save("grey.png", original.convert("L"), "L", grey_rgb, 0)
    save("grey16.png", Image.fromarray(grey.astype(np.uint16) * 257), "I;16", grey_rgb)
    save("grey16.tif", Image.fromarray(grey.astype(np.uint16) * 257), "I;16", grey_rgb)
    save("int32.tif", Image.fromarray(grey.astype(np.int32) * 257), "I", grey_rgb)  # 16-bit values in 32 bits
    save("int32-8bit.tif", Image.fromarray(grey.astype(np.int32)), "I", grey_rgb)  # PIL's L -> I keeps 0-255
    save("float.tif", Image.fromarray(grey.astype(np.float32) / 255), "F", grey_rgb)  # floats in [0, 1]
    save("palette.png", original.quantize(256), "P", rgb, 0)
    save("grey-alpha.png", Image.merge("LA", (original.convert("L"), opaque)), "LA", grey_rgb, 0)
    save("rgba.png", Image.merge("RGBA", (*original.split(), opaque)), "RGBA", rgb, 0)
    save("cmyk.tif", original.convert("CMYK"), "CMYK", rgb, 0)
    lab = original.convert("LAB")  # PIL's RGB <-> Lab is approximate (28 levels off here), so the
    save("lab.tif", lab, "LAB", np.asarray(lab.convert("RGB")), 0)  # file holds what its own conversion gives
    _png_16bit_rgb(folder / "rgb48.png", rgb.astype(np.uint16) * 257)
    expected["rgb48.png"] = ("RGB", rgb, 1)
    return expected


def test_every_image_mode_pil_opens_becomes_the_8_bit_face_it_holds(tmp_path):
    from lightning_faces.data.images import load_face

    expected = _faces_in_every_mode(tmp_path / "modes")
    for name, (mode, pixels, tolerance) in expected.items():
        with Image.open(tmp_path / "modes" / name) as image:
            assert image.mode == mode, name
        face = load_face(tmp_path / "modes" / name, 24, 1.0).permute(1, 2, 0).numpy().astype(int)
        error = np.abs(face - pixels).max()
        assert error <= tolerance, f"{name} ({mode}): off by up to {error} of 255"


def test_transparent_pixels_are_laid_over_white_and_a_palette_keeps_its_transparency(tmp_path):
    from lightning_faces.data.images import load_face

    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    clear.save(tmp_path / "clear.png")
    half = Image.new("LA", (8, 8), (0, 128))
    half.save(tmp_path / "half.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert load_face(tmp_path / "clear.png", 8, 1.0).unique().tolist() == [255]
    assert load_face(tmp_path / "half.png", 8, 1.0).unique().tolist() == [127]  # black at half over white
    assert load_face(tmp_path / "palette.png", 8, 1.0).unique().tolist() == [255]
    for mode, colour in (("RGB", (10, 20, 30)), ("L", 40)):  # PNG's transparent colour (tRNS), no alpha channel
        image = Image.new(mode, (8, 8), colour)
        image.save(tmp_path / f"trns-{mode}.png", transparency=colour)
        assert load_face(tmp_path / f"trns-{mode}.png", 8, 1.0).unique().tolist() == [255]


def test_a_folder_says_in_one_line_how_many_images_of_each_unusual_mode_it_holds(tmp_path, capsys):
    expected = _faces_in_every_mode(tmp_path / "modes")
    dataset = ImageFolder(tmp_path / "modes", 16, 1.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "not 8-bit RGB" in line]
    assert len(lines) == 1, lines
    unusual = sum(mode != "RGB" for mode, _, _ in expected.values())
    assert f"{unusual} of {len(expected)} images are not 8-bit RGB" in lines[0]
    assert "2 16-bit greyscale (I;16)" in lines[0] and "2 32-bit integer (I)" in lines[0]
    assert "1 32-bit float (F)" in lines[0] and "1 palette (P)" in lines[0]
    assert len(dataset) == len(expected)
    ImageFolder(tmp_path / "modes", 16, 1.0)  # said once per folder, not at every construction
    assert "not 8-bit RGB" not in capsys.readouterr().err


def test_a_datamodule_takes_its_source_as_a_part(tmp_path, monkeypatch):
    options = dict(image_size=16, batch_size=4, num_workers=0)
    named = SyntheticFacesDataModule(num_images=16, num_val_images=4, seed=3, **options)
    composed = FaceDataModule(DrawnFaces(num_images=16, num_val_images=4, seed=3), **options)
    for data in (named, composed):
        data.setup("fit")
    assert torch.equal(named.train_set.tensors[0], composed.train_set.tensors[0])
    assert torch.equal(named.val_set.tensors[0], composed.val_set.tensors[0])
    assert not torch.equal(composed.train_set.tensors[0][:4], composed.val_set.tensors[0])  # other faces
    # and a config can give the part by class path
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: lightning_faces.data.FaceDataModule\n  init_args:\n"
        "    source: {class_path: lightning_faces.data.DrawnFaces, init_args: {num_images: 16, seed: 3}}\n"
        "    image_size: 16\n    batch_size: 4\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config", str(config)]
    data = make_cli(args, run=False, save_config_callback=None).datamodule
    assert type(data) is FaceDataModule and isinstance(data.source, DrawnFaces)
    assert (data.source.num_images, data.source.seed, data.image_size, data.batch_size) == (16, 3, 16, 4)
