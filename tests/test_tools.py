"""`python -m lightning_faces fid A B` and the real Inception weights when ../shared has them."""

from pathlib import Path

import pytest
import torch

import lightning_faces.tools as tools
from lightning_faces.cli import main
from lightning_faces.metrics import check_inception_weights, make_fid
from tests.conftest import REPO, face_like_image
from tests.test_metrics import TinyFeatures

SHARED_WEIGHTS = REPO.parent / "shared" / "fid" / "inception-2015-12-05-torchfidelity-layout-nofc.pth"


@pytest.fixture
def tiny_fid(monkeypatch):
    """The fid command with a tiny feature network instead of Inception (no weights here)."""
    monkeypatch.setattr(tools, "check_inception_weights", lambda path, option: None)
    monkeypatch.setattr(tools, "make_fid", lambda weights, resize: make_fid(feature_extractor=TinyFeatures()))


def folder_of_faces(path: Path, count: int, offset: int = 0) -> Path:
    path.mkdir(parents=True)
    for index in range(count):
        face_like_image(index + offset, 40, 40).save(path / f"{index}.png")
    return path


def fid_of(args: list[str], capsys) -> float:
    main(["fid", *args])
    return float(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])


def test_fid_command_scores_folders_and_celeba_layouts(tmp_path, fake_celeba, tiny_fid, capsys):
    a = folder_of_faces(tmp_path / "a", 12)
    b = folder_of_faces(tmp_path / "b", 12, offset=100)
    assert abs(fid_of([str(a), str(a), "--image-size", "16"], capsys)) < 1e-3  # the same images
    assert fid_of([str(a), str(b), "--image-size", "16"], capsys) > 0.01
    assert fid_of([str(fake_celeba), str(a), "--image-size", "16", "--split", "train"], capsys) > 0


def test_fid_command_explains_a_checkpoint_of_a_gan_built_in_python(tmp_path, fake_celeba, tiny_fid, capsys):
    # CLI-written checkpoints are sampled (test_errors.py); one of GAN(...) built in Python
    # does not record its networks' settings, and the command says so in one line
    from tests.test_module import make_model, train

    model = make_model()
    train(tmp_path, model, steps=1)
    checkpoint = tmp_path / "g.ckpt"
    model.trainer.save_checkpoint(checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        main(["fid", str(checkpoint), str(fake_celeba), "--num-samples", "10", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "does not record lightning_faces.nets.dcgan.DCGANGenerator's settings" in err


def test_fid_command_refuses_what_is_neither_folder_nor_checkpoint(tmp_path, tiny_fid, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fid", str(tmp_path / "missing"), str(tmp_path / "missing2")])
    assert (
        exit_info.value.code == 2
        and "missing does not exist: FID takes a checkpoint file or a folder" in capsys.readouterr().err
    )


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="needs ../shared/fid (the Inception weights, offline)")
def test_real_inception_weights_load_offline_and_same_images_score_zero():
    assert check_inception_weights(str(SHARED_WEIGHTS)) == str(SHARED_WEIGHTS)
    fid = make_fid(str(SHARED_WEIGHTS))
    images = torch.stack(
        [torch.from_numpy(__import__("numpy").array(face_like_image(i, 64, 64))).permute(2, 0, 1) for i in range(8)]
    )
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert abs(fid.compute().item()) < 0.1
