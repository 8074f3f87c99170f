"""Prepared data: decoded once into a memory-mapped uint8 array, keyed, atomic, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_faces.cli import main
from lightning_faces.data import CelebA, CelebADataModule, SyntheticFacesDataModule
from lightning_faces.data import prepared as prepared_module
from lightning_faces.data.prepared import PreparedImages, check, prepared_folder
from lightning_faces.errors import FacesError
from tests.conftest import REPO, tiny_gan
from tests.test_module import train


def module(data_dir, tmp_path, **kwargs) -> CelebADataModule:
    options = dict(image_size=16, batch_size=4, num_workers=0, prepared_dir=str(tmp_path / "prepared"))
    return CelebADataModule(data_dir=str(data_dir), **{**options, **kwargs})


def test_prepared_split_holds_exactly_the_decoded_images_and_attributes(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path)
    (folder,) = data.prepare(["train"])
    prepared, source = PreparedImages(folder), CelebA(fake_celeba, "train", 16, 0.79)
    assert len(prepared) == len(source) == 16
    for index in (0, 7, 15):
        assert torch.equal(prepared[index][0], source[index][0])  # uint8, pixel for pixel
        assert torch.equal(prepared[index][1], source[index][1])
    assert prepared[0][0].dtype == torch.uint8 and prepared[0][0].shape == (3, 16, 16)


def test_workers_read_batches_through_the_memory_map(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path)
    (folder,) = data.prepare(["train"])
    dataset = PreparedImages(folder)
    dataset[0]  # mapped in this process first: workers must still map it themselves
    loader = DataLoader(dataset, batch_size=5, num_workers=2)
    images = torch.cat([batch[0] for batch in loader])
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(len(dataset))]))


def test_other_settings_make_another_folder_and_the_same_settings_reuse_it(fake_celeba, tmp_path, monkeypatch):
    (first,) = module(fake_celeba, tmp_path).prepare(["train"])
    (bigger,) = module(fake_celeba, tmp_path, image_size=32).prepare(["train"])
    (tighter,) = module(fake_celeba, tmp_path, crop=0.5).prepare(["train"])
    assert len({first, bigger, tighter}) == 3
    assert np.load(bigger / "images.npy", mmap_mode="r").shape == (16, 3, 32, 32)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a sound prepared split")

    monkeypatch.setattr(prepared_module, "build", no_build)
    assert module(fake_celeba, tmp_path).prepare(["train"]) == [first]


def test_an_interrupted_build_leaves_nothing_to_trust(fake_celeba, tmp_path, monkeypatch):
    data = module(fake_celeba, tmp_path)
    real_getitem = CelebA.__getitem__

    def interrupted(self, index):
        if index == 9:
            raise KeyboardInterrupt  # Ctrl-C, or a killed job, half-way through
        return real_getitem(self, index)

    monkeypatch.setattr(CelebA, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(["train"])
    # neither a final nor a temporary folder (the lock file stays: it is only ever opened)
    assert [p.suffix for p in (tmp_path / "prepared").iterdir()] == [".lock"]
    monkeypatch.setattr(CelebA, "__getitem__", real_getitem)
    (folder,) = data.prepare(["train"])
    assert check(folder, data.describe("train")) is None


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete meta"])
def test_a_damaged_prepared_split_is_detected_and_rebuilt(fake_celeba, tmp_path, damage, capsys):
    data = module(fake_celeba, tmp_path)
    (folder,) = data.prepare(["train"])
    images = folder / "images.npy"
    original = images.read_bytes()
    if damage == "truncate":
        images.write_bytes(original[:-100])
    elif damage == "flip a byte":
        images.write_bytes(original[:-100] + bytes([original[-100] ^ 0xFF]) + original[-99:])
    else:
        (folder / "meta.json").unlink()
    assert check(folder, data.describe("train")) is not None

    assert data.prepare(["train"]) == [folder]
    assert "is unusable" in capsys.readouterr().out
    assert images.read_bytes() == original and check(folder, data.describe("train")) is None
    assert len(list((tmp_path / "prepared").glob("*.broken-*"))) == 1  # kept aside, not trusted


def test_fit_builds_the_prepared_split_itself_and_trains_from_it(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path)
    data.setup("fit")  # no prepare_data before: setup builds what is missing
    assert isinstance(data.train_set, PreparedImages)
    assert prepared_folder(data.prepared_dir, data.describe("train")).exists()
    batch = next(iter(data.train_dataloader()))
    assert batch[0].dtype == torch.uint8 and batch[0].shape == (4, 3, 16, 16)


def test_prepared_false_reads_the_files(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path, prepared=False)
    data.setup("fit")
    assert isinstance(data.train_set, CelebA) and not (tmp_path / "prepared").exists()


def test_prepare_command_builds_what_fit_reads(fake_celeba, tmp_path, capsys):
    args = ["--config", str(REPO / "configs" / "dcgan.yaml"), "--data.data_dir", str(fake_celeba)]
    args += ["--data.image_size", "16", "--data.prepared_dir", str(tmp_path / "p"), "--data.num_workers", "0"]
    main(["prepare", *args])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepared: ")]
    assert len(printed) == 2  # train and valid (dcgan.yaml validates on 'valid')
    shapes = sorted(np.load(Path(line[len("prepared: ") :]) / "images.npy", mmap_mode="r").shape for line in printed)
    assert shapes == [(4, 3, 16, 16), (16, 3, 16, 16)]


class SlowSource(torch.utils.data.Dataset):
    """A CelebA split that takes a while to decode (so two builders overlap) and counts its builds."""

    def __init__(self, data_dir: str, marker_dir: str) -> None:
        self.inner = CelebA(data_dir, "train", 16, 0.79)
        self.marker_dir = Path(marker_dir)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        if index == 0:
            (self.marker_dir / f"build-{__import__('os').getpid()}").touch()  # one per decoding process
        __import__("time").sleep(0.03)
        return self.inner[index]


def prepare_in_process(data_dir: str, prepared_dir: str, marker_dir: str, results) -> None:
    data = CelebADataModule(data_dir=data_dir, image_size=16, batch_size=4, num_workers=0, prepared_dir=prepared_dir)
    try:
        folder = prepared_module.ensure(
            lambda: SlowSource(data_dir, marker_dir), prepared_dir, data.describe("train"), 0, "train"
        )
        results.put(("ok", str(folder)))
    except BaseException as error:  # noqa: BLE001 (reported to the test)
        results.put(("error", f"{type(error).__name__}: {error}"))


def race(fake_celeba, tmp_path) -> list[tuple[str, str]]:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    (tmp_path / "markers").mkdir(exist_ok=True)
    args = (str(fake_celeba), str(tmp_path / "prepared"), str(tmp_path / "markers"), results)
    processes = [context.Process(target=prepare_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    return [results.get(timeout=5) for _ in processes]


def test_two_processes_on_an_empty_cache_decode_once_and_share_the_folder(fake_celeba, tmp_path):
    outcomes = race(fake_celeba, tmp_path)
    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1] == outcomes[1][1]
    assert len(list((tmp_path / "markers").iterdir())) == 1  # one decoded, the other waited and reused


def test_two_processes_that_find_a_damaged_folder_repair_it_once_without_crashing(fake_celeba, tmp_path):
    (folder,) = module(fake_celeba, tmp_path).prepare(["train"])
    images = folder / "images.npy"
    original = images.read_bytes()
    images.write_bytes(original[:-100])
    for _ in range(3):  # the race was lost 2 times in 3 before the lock
        outcomes = race(fake_celeba, tmp_path)
        assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
        assert images.read_bytes() == original
        images.write_bytes(original[:-100])
    assert len(list((tmp_path / "prepared").glob("*.broken-*"))) == 3  # one repair per damage


def test_a_killed_build_leaves_a_temporary_that_the_next_start_removes(fake_celeba, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    from lightning_faces.files import owner_tag

    host = owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / "prepared" / f"0123456789abcdef.tmp-{host}-{dead_pid}-1"
    live = tmp_path / "prepared" / f"fedcba9876543210.tmp-{owner_tag()}-2"  # this process: still writing
    other_host = tmp_path / "prepared" / f"0123456789abcdef.tmp-otherhost-{dead_pid}-3"
    for folder in (stale, live, other_host):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"\0" * 1000)
    module(fake_celeba, tmp_path).prepare(["train"])
    assert not stale.exists() and live.exists() and other_host.exists()


def trained_batches(tmp_path, data, steps: int = 6) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The batches a tiny GAN trains on over ``steps`` iterations (as training_step gets them), and
    its weights after them."""
    torch.manual_seed(0)
    model = tiny_gan()
    seen, step = [], model.training_step

    def recorded(batch, batch_idx):
        seen.append((batch[0].clone(), batch[1].clone()))
        return step(batch, batch_idx)

    model.training_step = recorded
    train(tmp_path, model, steps, data=data)
    return seen, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("source", ["prepared", "drawn"])
def test_data_on_the_device_gives_the_batches_and_training_of_the_loader(fake_celeba, tmp_path, source):
    def make(on_device: bool):
        options = dict(image_size=16, batch_size=4, attributes=["Male", "Eyeglasses"], on_device=on_device)
        if source == "drawn":
            return SyntheticFacesDataModule(num_images=16, num_val_images=0, **options)
        return module(fake_celeba, tmp_path, val_split=None, **options)

    # 6 iterations of 4 from 16 images: into a second epoch (a new order) and flips on both
    loaded, loaded_weights = trained_batches(tmp_path, make(on_device=False))
    gathered, gathered_weights = trained_batches(tmp_path, make(on_device=True))
    assert len(loaded) == len(gathered) == 6
    for (images, attributes), (same_images, same_attributes) in zip(loaded, gathered, strict=True):
        assert torch.equal(images, same_images) and torch.equal(attributes, same_attributes)
        assert images.dtype == torch.float32 and attributes.shape == (4, 2)
    assert torch.equal(loaded_weights, gathered_weights)
    assert not torch.equal(loaded[0][0], loaded[4][0])  # the batches differ (the check can fail)


def test_data_on_the_device_loads_positions_and_keeps_the_array_once(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path, on_device=True)
    data.setup("fit")
    positions = next(iter(data.train_dataloader()))
    assert positions.dtype == torch.long and positions.shape == (4,)  # no images through the loader
    images, attributes = data._arrays_on(torch.device("cpu"))
    assert images.shape == (16, 3, 16, 16) and images.dtype == torch.uint8 and attributes.shape == (16, 40)
    assert data._arrays_on(torch.device("cpu"))[0] is images  # copied once, not per batch


def test_data_on_the_device_needs_an_array(fake_celeba, tmp_path):
    data = module(fake_celeba, tmp_path, prepared=False, on_device=True)
    with pytest.raises(FacesError, match="data.on_device needs the training images in one array"):
        data.setup("fit")
