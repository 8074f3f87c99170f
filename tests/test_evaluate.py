"""``evaluate``: FID, KID, precision/recall and IS, each with how it was measured (issue 27).

The metrics' directions on folders whose relation is known: a folder against itself, against a
copy missing half its modes, against blurred copies. The features come from a tiny network of
the tests (``probes.TextureFeatures``): Inception's weights are a download.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

from lightning_faces import evaluate as evaluation
from lightning_faces import metrics
from lightning_faces.cli import main
from lightning_faces.data.synthetic import render_faces
from lightning_faces.errors import FacesError
from tests.probes import TextureFeatures

COUNT = 40  # faces of each mode


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """real: two modes of 40 faces (drawn, and the same drawings in shades of green); same: a copy;
    half: the first mode only; blurred: every real face blurred."""
    root = tmp_path_factory.mktemp("evaluate")
    images, _ = render_faces(COUNT, 32, seed=5)
    made = {name: root / name for name in ("real", "same", "half", "blurred")}
    for folder in made.values():
        folder.mkdir()
    for index, array in enumerate(images):
        face = Image.fromarray(array.permute(1, 2, 0).numpy())
        gray, dark = ImageOps.grayscale(face), Image.new("L", face.size, 0)
        for mode, image in (("a", face), ("b", Image.merge("RGB", (dark, gray, dark)))):
            name = f"{mode}{index:03d}.png"
            image.save(made["real"] / name)
            image.filter(ImageFilter.GaussianBlur(2)).save(made["blurred"] / name)
            if mode == "a":
                image.save(made["half"] / name)
    for file in made["real"].iterdir():
        shutil.copy(file, made["same"] / file.name)
    return made


def scores(folders, fake: str, asked=("fid", "kid", "precision", "recall")) -> dict:
    from lightning_faces.tools import _source

    class Options:
        split, crop, max_images, batch_size = "all", None, None, 16

    sources = [_source(str(folders[name]), None, 32, Options(), what="evaluate") for name in (fake, "real")]
    result = evaluation.evaluate(*sources, asked, TextureFeatures(), kid_subsets=10, kid_subset_size=40)
    return {metric: entry["value"] for metric, entry in result.items()}


def test_a_folder_against_itself_is_perfect(folders):
    same = scores(folders, "same")
    blurred = scores(folders, "blurred")
    assert same["precision"] == same["recall"] == 1.0
    # FID of a set with itself is 0 up to rounding; KID is unbiased, so 0 only on average over its subsets
    assert abs(same["fid"]) < 1e-3 * blurred["fid"] and abs(same["kid"]) < 0.2 * blurred["kid"]


def test_missing_modes_cost_recall_not_precision(folders):
    half = scores(folders, "half")
    assert half["precision"] == 1.0  # every generated face is a real one
    assert half["recall"] <= 0.6  # the green half of the real faces has no generated neighbour


def test_blur_costs_precision(folders):
    blurred = scores(folders, "blurred")
    assert blurred["precision"] <= 0.2
    assert blurred["fid"] > scores(folders, "half")["fid"] > scores(folders, "same")["fid"]


def test_the_inception_score_counts_confident_distinct_classes():
    classes = torch.arange(100) % 10
    confident = torch.nn.functional.one_hot(classes, 1008).double() * 50
    ten = metrics.score_features(torch.zeros(0, 1), torch.zeros(0, 1), ["is"], fake_logits=confident, is_splits=1)
    one = metrics.score_features(
        torch.zeros(0, 1), torch.zeros(0, 1), ["is"], fake_logits=confident[:1].repeat(100, 1), is_splits=1
    )
    assert ten["is"] == pytest.approx(10, rel=1e-3) and one["is"] == pytest.approx(1, rel=1e-3)


def test_a_features_only_inception_is_refused_for_the_inception_score():
    network = torch.nn.Module()
    network.fc = torch.nn.Linear(2048, 1008)
    assert metrics.classifier_weights(network).shape == (1008, 2048)
    torch.nn.init.zeros_(network.fc.weight)
    with pytest.raises(FacesError, match="fc.* are zeros: a features-only copy"):
        metrics.classifier_weights(network)


def test_unknown_metrics_and_missing_vgg16_weights_are_one_line(tmp_path):
    with pytest.raises(FacesError, match="--metrics: fidd; choose from fid, kid, precision, recall, is"):
        metrics.check_metrics(["fid", "fidd"])
    with pytest.raises(FacesError, match="--vgg16-weights .*nowhere.pth is not a file: download"):
        evaluation.VGG16Features(tmp_path / "nowhere.pth")
    not_vgg = tmp_path / "small.pth"
    torch.save({"weight": torch.zeros(2)}, not_vgg)
    with pytest.raises(FacesError, match="is not torchvision's VGG16 state dict"):
        evaluation.VGG16Features(not_vgg)


def test_the_command_prints_a_table_and_writes_json_with_the_protocol(folders, tmp_path, monkeypatch, capsys):
    # Inception's weights are a download: the command's network is swapped for the tests'
    monkeypatch.setattr(evaluation, "InceptionFeatures", lambda weights, resize: TextureFeatures())
    monkeypatch.setattr("lightning_faces.tools.check_inception_weights", lambda path, option: path)
    monkeypatch.setattr(evaluation, "find_vgg16", lambda path: None)  # whatever torch's hub cache holds
    out = tmp_path / "scores.json"
    args = ["evaluate", str(folders["half"]), str(folders["real"]), "--image-size", "32", "--kid-subset-size", "40"]
    main([*args, "--json", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert list(saved["metrics"]) == ["fid", "kid", "precision", "recall"]
    recall = saved["metrics"]["recall"]
    assert recall["value"] <= 0.6 and recall["k"] == 3 and recall["generated"] == COUNT and recall["real"] == 2 * COUNT
    assert recall["features"] == TextureFeatures.name and "papers use VGG16" in recall["note"]
    assert saved["metrics"]["kid"]["subset size"] == 40 and saved["protocol"]["image size"] == 32
    assert (
        f"| recall | {recall['value']:.4g} | {TextureFeatures.name}, {COUNT} generated, {2 * COUNT} real, k 3 |"
        in printed
    )
    assert "protocol: " in printed
