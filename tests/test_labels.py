"""Your own labels for a folder of faces: a CSV beside the images (issue 27).

A drawn-faces folder with a CSV whose columns are named otherwise than CelebA's (the drawings
know what they show: Smiling becomes Happy, Eyeglasses becomes Glasses) trains a conditional
GAN, a judge and ``generate --attributes`` as CelebA does.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_faces.data import CELEBA_ATTRIBUTES, ImageFolderDataModule
from lightning_faces.data.synthetic import render_faces
from lightning_faces.errors import FacesError
from tests.conftest import REPO, run_cli

RENAMED = {"Happy": "Smiling", "Glasses": "Eyeglasses", "Beard": "Goatee"}


def labelled_folder(root: Path, count: int = 24, size: int = 16, soft: bool = False) -> tuple[Path, torch.Tensor]:
    """``count`` drawn faces as PNGs in root/faces (half in a subfolder) and their labels.csv;
    returns the folder and the labels (N, 3) in the CSV's column order (Happy, Glasses, Beard)."""
    images, attributes = render_faces(count, size, seed=3)
    folder = root / "faces"
    columns = [CELEBA_ATTRIBUTES.index(name) for name in RENAMED.values()]
    labels = attributes[:, columns].clone()
    if soft:
        labels[:, 2] = torch.linspace(0, 1, count)
    rows = []
    for index in range(count):
        name = f"{'older/' if index % 2 else ''}{index:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(folder / name)
        rows.append([name, *(f"{value:g}" for value in labels[index].tolist())])
    write_csv(folder / "labels.csv", [["file", *RENAMED], *rows])
    return folder, labels


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(rows)


def batches(folder: Path, attributes, **settings) -> tuple[torch.Tensor, list[str]]:
    """Every training image's attribute row as the datamodule delivers it to the GAN, in file order."""
    data = ImageFolderDataModule(
        str(folder), image_size=16, batch_size=4, num_workers=0, flip=False, attributes=attributes, **settings
    )
    data.setup("fit")
    rows = torch.stack([data.train_set[i][1] for i in range(len(data.train_set))])
    return rows[:, data.attribute_columns], list(data.attributes)


def test_data_attributes_choose_the_csvs_columns_in_the_order_given(tmp_path):
    folder, labels = labelled_folder(tmp_path, soft=True)
    order = sorted(range(len(labels)), key=lambda i: f"{'older/' if i % 2 else ''}{i:03d}.png")  # files, sorted
    rows, names = batches(folder, ["Beard", "Happy"])
    assert names == ["Beard", "Happy"]
    torch.testing.assert_close(rows, labels[order][:, [2, 0]])
    assert ((rows[:, 0] > 0) & (rows[:, 0] < 1)).any()  # soft labels arrive as they are


def test_the_labels_can_live_elsewhere_and_change_the_prepared_array(tmp_path):
    folder, labels = labelled_folder(tmp_path)
    moved = tmp_path / "mine.csv"
    (folder / "labels.csv").rename(moved)
    prepared = {"prepared": True, "prepared_dir": str(tmp_path / "prepared")}
    before, _ = batches(folder, ["Happy"], labels=str(moved), **prepared)
    text = moved.read_text().splitlines()
    flipped = [
        text[0],
        *(",".join([line.split(",")[0], "1" if line.split(",")[1] == "0" else "0", "0", "0"]) for line in text[1:]),
    ]
    moved.write_text("\n".join(flipped) + "\n")
    after, _ = batches(folder, ["Happy"], labels=str(moved), **prepared)
    assert torch.equal(after, 1 - before)  # not the array prepared from the old labels


BROKEN = {
    "a value that is not a number": (
        lambda rows: rows[3].__setitem__(1, "yes"),
        "line 4: Happy is 'yes'; values are 0 or 1",
    ),
    "a value above 1": (lambda rows: rows[2].__setitem__(2, "2"), "line 3: Glasses is '2'"),
    "a short row": (lambda rows: rows[5].pop(), "line 6 has 3 values for the 4 columns of line 1"),
    "a file twice": (lambda rows: rows.append(list(rows[1])), "000.png has a row already (line 2)"),
    "an image without a row": (lambda rows: rows.pop(1), "has no row for 1 of the 24 images (first: 000.png)"),
    "a header of one column": (lambda rows: rows.__setitem__(0, ["file"]), "line 1 must name the file column"),
    "a name twice": (
        lambda rows: rows.__setitem__(0, ["file", "Happy", "Happy", "Beard"]),
        "line 1 names Happy more than once",
    ),
}


@pytest.mark.parametrize(("break_", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_labels_file_is_one_line_naming_the_file_and_line(tmp_path, break_, message):
    folder, _ = labelled_folder(tmp_path)
    with (folder / "labels.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    break_(rows)
    write_csv(folder / "labels.csv", rows)
    with pytest.raises(FacesError) as error:
        batches(folder, ["Happy"])
    assert str(folder / "labels.csv") in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_names_the_csv_does_not_have_are_refused_with_its_columns(tmp_path):
    folder, _ = labelled_folder(tmp_path)
    with pytest.raises(
        FacesError, match=r"unknown attribute Smiling; the columns of .*labels.csv are Happy Glasses Beard$"
    ):
        batches(folder, ["Smiling"])
    with pytest.raises(FacesError, match="all means CelebA's 40; the columns of .* are Happy Glasses Beard"):
        batches(folder, "all")
    (folder / "labels.csv").unlink()
    with pytest.raises(FacesError, match="no attribute labels, so data.attributes must be empty: put a labels.csv"):
        batches(folder, ["Happy"])
    with pytest.raises(FacesError, match="data.labels .*nowhere.csv is not a file"):
        batches(folder, ["Happy"], labels=str(tmp_path / "nowhere.csv"))
    rows, names = batches(folder, None)  # unconditional: no labels needed
    assert names == [] and rows.shape == (24, 0)


def test_a_labelled_folder_trains_a_judge_and_a_conditional_gan_that_generates_on_request(tmp_path):
    folder, _ = labelled_folder(tmp_path, count=32)
    data = tmp_path / "data.yaml"
    data.write_text(
        "data:\n  class_path: lightning_faces.data.ImageFolderDataModule\n"
        f"  init_args: {{data_dir: {folder}, image_size: 16, batch_size: 8, attributes: [Happy, Glasses]}}\n"
    )
    fast = ["--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false", "--config", str(data)]
    judge = run_cli(["fit", "--config", str(REPO / "configs" / "attribute_classifier_quickstart.yaml"), *fast,
                     "--model.width", "4"], cwd=tmp_path)  # fmt: skip
    assert judge.returncode == 0, judge.stderr[-3000:]
    classifier = tmp_path / "runs" / "attribute_classifier_quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    small = ["--model.generator.init_args.width", "4", "--model.discriminator.init_args.width", "4",
             "--model.generator.init_args.latent_dim", "8"]  # fmt: skip
    judged = ["--trainer.callbacks.classifier_path", str(classifier), "--trainer.callbacks.every_n_steps", "4",
              "--trainer.callbacks.num_samples", "16"]  # fmt: skip
    gan = run_cli(["fit", "--config", str(REPO / "configs" / "conditional_quickstart.yaml"), *judged, *fast, *small],
                  cwd=tmp_path)  # fmt: skip
    assert gan.returncode == 0, gan.stderr[-3000:]
    run = tmp_path / "runs" / "conditional_quickstart" / "version_0"
    metrics = (run / "metrics.csv").read_text()
    assert "val/attribute_accuracy/Happy" in metrics and "val/attribute_accuracy/Glasses" in metrics
    out = tmp_path / "glasses"
    made = run_cli(["generate", str(run / "checkpoints" / "last.ckpt"), "--attributes", "Glasses=1,Happy=0",
                    "--num", "2", "--out", str(out)], cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 2
    wrong = run_cli(["generate", str(run / "checkpoints" / "last.ckpt"), "--attributes", "Smiling=1"], cwd=tmp_path)
    assert wrong.returncode == 2 and "its attributes are Happy Glasses" in wrong.stderr
