"""The benchmark scripts run end to end (tiny settings, fake CelebA), so they cannot rot."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from PIL import Image

from benchmarks import data, quality, train
from lightning_faces.hardware import choose_precision


def test_data_benchmark_measures_both_pipelines_and_memory(fake_celeba, tmp_path, capsys):
    result = data.main(
        [
            "--data-dir",
            str(fake_celeba),
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--epochs",
            "1",
            "--json",
            str(tmp_path / "data.json"),
        ]
    )
    pipelines = [row["pipeline"] for row in result["throughput"]]
    assert len(pipelines) == 3
    plain = result["throughput"][0]["images/s"]
    for row in result["throughput"][1:]:  # each ratio is that row's images/s over the plain pipeline's
        assert row["vs plain"] == pytest.approx(row["images/s"] / plain)
    assert [row["rows"] for row in result["memory"]] == [24, 240]  # the sample, and it tiled x10
    assert json.loads((tmp_path / "data.json").read_text())["machine"]["cpus"] >= 1
    assert "| JPEG + PIL + torchvision transforms" in capsys.readouterr().out


def test_training_benchmark_times_both_loops(fake_celeba, tmp_path):
    args = [
        "--data-dir",
        str(fake_celeba),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--width",
        "4",
        "--latent-dim",
        "8",
        "--workers",
        "0",
        "--warmup",
        "1",
        "--iterations",
        "2",
        "--rounds",
        "1",
        "--variants",
        "32-true",
        "bf16-mixed+channels_last+fresh+on_device",
        "default",
        "--json",
        str(tmp_path / "train.json"),
    ]
    result = train.main(args)
    names = [row["loop"].removeprefix("lightning_faces, ") for row in result["results"][1:]]
    assert names == [
        "32-true",
        "bf16-mixed, channels_last, fresh, on_device",
        f"default on cpu (channels_last, {choose_precision('cpu')[0]})",  # fit's choice on this CPU
    ]
    assert [len(row["rounds"]) for row in result["results"]] == [1, 1, 1, 1]
    with pytest.raises(SystemExit):
        train.main([*args[:-5], "32-true+turbo"])  # an unknown switch is refused before any timing
    # a ratio is the median over rounds of that round's images/s over the plain loop's; the
    # headline ratio is the first lightning_faces row's
    plain = result["results"][0]["rounds"]
    for row in result["results"][1:]:
        ratios = sorted(value / base for value, base in zip(row["rounds"], plain, strict=True))
        assert row["vs plain"] == pytest.approx(ratios[len(ratios) // 2])
    assert result["ratio"] == result["results"][1]["vs plain"]
    written = json.loads((tmp_path / "train.json").read_text())
    assert written["benchmark"] == "train" and written["ratio"] == pytest.approx(result["ratio"])


def test_quality_benchmark_trains_each_config_per_seed_and_scores_held_out_images(
    fake_celeba, tmp_path, capsys, monkeypatch
):
    args = ["--data-dir", str(fake_celeba), "--candidates", "dcgan", "sngan+ema", "--seeds", "0", "1"]
    args += ["--minutes", "0.03", "--image-size", "16", "--width", "4", "--train-batch-size", "4"]
    args += ["--held-out", "8", "--samples", "8", "--kid-subsets", "3", "--kid-subset-size", "4"]
    args += ["--feature-extractor", "tests.test_metrics.TinyFeatures", "--work", str(tmp_path / "work")]
    result = quality.main([*args, "--json", str(tmp_path / "quality.json")])
    runs = result["runs"]
    assert [(row["config"], row["seed"]) for row in runs] == [
        ("dcgan", 0),
        ("dcgan", 1),
        ("sngan+ema", 0),
        ("sngan+ema", 1),
    ]
    assert all(row["iterations"] > 0 and row["kid_std"] >= 0 for row in runs)  # each run trained, then scored
    for summary in result["summary"]:  # a config's KID is the mean over its seeds, its spread max - min
        kids = [row["kid"] for row in runs if row["config"] == summary["config"]]
        assert summary["KID x 1000 mean"] == pytest.approx(1000 * sum(kids) / len(kids))
        assert summary["seed spread"] == pytest.approx(1000 * (max(kids) - min(kids)))
    assert runs[0]["kid"] != runs[1]["kid"]  # two seeds, two different generators
    # 8 of the 24 images held out, the other 16 trained on, none in both
    held_out = {p.name for p in (tmp_path / "work" / "held-out").iterdir()}
    trained = {p.name for p in (tmp_path / "work" / "train").iterdir()}
    assert len(held_out) == 8 and len(trained) == 16 and not held_out & trained
    sngan = torch.load(tmp_path / "work" / "runs" / "sngan+ema" / "version_1" / "checkpoints" / "final.ckpt")
    assert sngan["hyper_parameters"]["ema_decay"] == 0.999 and sngan["hyper_parameters"]["seed"] == 1
    out = capsys.readouterr().out
    assert "| sngan+ema" in out and "8 held-out real vs 8 generated images" in out
    grid = Image.open(tmp_path / "work" / "runs" / "dcgan" / "version_0" / "checkpoints" / "scored.png")
    assert grid.size == (8 * 16 + 9, 16 + 2)  # the 8 scored images of 16 px in a row, to look at

    def no_inception(*args, **kwargs):
        raise AssertionError("features computed again")

    monkeypatch.setattr(quality, "features_of", no_inception)  # a second call: every run and score cached
    again = quality.main([*args, "--json", str(tmp_path / "again.json")])
    assert [(row["config"], row["seed"], row["kid"]) for row in again["runs"]] == [
        (row["config"], row["seed"], row["kid"]) for row in runs
    ]
    # a candidate whose settings changed since its run (an edited overlay): not scored as if the same
    monkeypatch.setitem(quality.CANDIDATES, "dcgan", (["dcgan.yaml"], ["--model.ema_decay", "0.99"]))
    stale = r"dcgan/version_0 was trained with other settings than dcgan has now \(model.ema_decay\): pass --retrain"
    with pytest.raises(SystemExit, match=stale):
        quality.main(args)


def test_truncation_benchmark_compares_both_ways_and_writes_grids(checkpoints, tmp_path, capsys):
    from benchmarks import truncation

    payload = truncation.main(
        [str(checkpoints["plain"]), "--samples", "12", "--psi", "1", "0.5", "0", "--out", str(tmp_path)]
    )
    spread = {(row["way"], row["psi"]): row["pixel spread"] for row in payload["rows"]}
    assert spread[("first block", 1.0)] == spread[("latent", 1.0)] > 0  # psi 1: both leave faces alone
    assert spread[("first block", 0.0)] == 0.0 < spread[("first block", 0.5)] < spread[("first block", 1.0)]
    assert (tmp_path / "first-block.png").is_file() and (tmp_path / "latent.png").is_file()
    assert "| first block | 0.5" in capsys.readouterr().out


def printed_model(name, tmp_path):
    """The model section `fit` resolves for a quality-benchmark candidate's configs and overrides."""
    files, overrides = quality.CANDIDATES[name]
    configs = [item for f in files for item in ("--config", str(quality.CONFIGS / f))]
    return quality.resolved_config([*configs, *overrides, "--data.data_dir", str(tmp_path)])["model"]


def test_r3gan_at_cpu_size_trains_in_fp32_where_fit_would_choose_bf16(tmp_path):
    """bf16 trains the CPU recipe slower than fp32 even on a bf16 CPU: its overlay says 32-true."""
    args = ["--config", str(quality.CONFIGS / "r3gan.yaml"), "--data.data_dir", str(tmp_path)]
    assert quality.resolved_config(args)["trainer"]["precision"] is None  # unset: fit chooses
    assert quality.resolved_config([*args, *quality.R3GAN_CPU])["trainer"]["precision"] == "32-true"


@pytest.mark.parametrize(
    "ablation, removed",
    [
        ("r3gan-dcgan-nets", {"generator", "discriminator"}),
        ("r3gan-ns", {"objective"}),
        ("r3gan-no-penalties", {"d_regularizers"}),
        ("r3gan-held", {"d_regularizers", "augment", "ema_half_life"}),
        ("r3gan-no-ramp", {"ema_ramp"}),
    ],
)
def test_each_r3gan_ablation_differs_from_the_cpu_recipe_in_its_one_part(ablation, removed, tmp_path):
    recipe = printed_model("r3gan", tmp_path)
    model = printed_model(ablation, tmp_path)
    assert {key for key in recipe if model.get(key) != recipe[key]} == removed
    if ablation == "r3gan-ns":
        assert model["objective"]["class_path"].endswith("NonSaturating")
    if ablation == "r3gan-no-penalties":
        assert not model["d_regularizers"]
    if ablation == "r3gan-no-ramp":
        assert model["ema_ramp"] is None and recipe["ema_ramp"] == 0.05
    if ablation == "r3gan-held":  # every schedule of the recipe, held at the value it ends at
        assert "Cosine" not in yaml.safe_dump(model)
        held, scheduled = model["d_regularizers"], recipe["d_regularizers"]
        assert [r["class_path"] for r in held] == [r["class_path"] for r in scheduled]
        for h, s in zip(held, scheduled, strict=True):
            assert h["init_args"]["gamma"] == s["init_args"]["gamma"]["init_args"]["end"]
            assert h["init_args"]["every"] == s["init_args"]["every"]
        end = recipe["augment"]["init_args"]["probability"]["init_args"]["end"]
        assert model["augment"]["init_args"]["probability"] == end
        assert model["augment"]["init_args"]["policy"] == recipe["augment"]["init_args"]["policy"]
        assert model["ema_half_life"] == recipe["ema_half_life"]["init_args"]["end"]


def test_the_longer_budget_variants_change_only_what_they_say(tmp_path):
    recipe = printed_model("r3gan", tmp_path)
    long = printed_model("r3gan-long", tmp_path)
    changed = {key for key in recipe if long.get(key) != recipe[key]}
    assert changed == {"d_regularizers", "augment", "lr", "beta2", "ema_half_life"}
    spans = [int(images) for images in re.findall(r"\bimages: (\d+)", yaml.safe_dump(long))]
    assert spans == [600_000] * 6  # R1's and R2's gamma, augmentation, lr, beta2, EMA half-life
    assert long["lr"]["init_args"]["start"] == recipe["lr"] == 4 * long["lr"]["init_args"]["end"]

    wide = printed_model("r3gan-wide-d", tmp_path)
    assert {key for key in recipe if wide.get(key) != recipe[key]} == {"discriminator"}
    doubled = [2 * w for w in recipe["discriminator"]["init_args"]["widths"]]
    assert wide["discriminator"]["init_args"]["widths"] == doubled
    assert wide["generator"] == recipe["generator"]


def test_the_g_probes_change_g_and_only_what_they_say(tmp_path):
    recipe = printed_model("r3gan", tmp_path)
    wide = printed_model("r3gan-wide-g", tmp_path)
    assert {key for key in recipe if wide.get(key) != recipe[key]} == {"generator", "lr", "g_optimizer", "d_optimizer"}
    assert wide["generator"]["init_args"]["widths"] == [128, 64, 32, 16]
    assert wide["lr"] is None  # each player's own: G's halved, D's the recipe's
    assert wide["d_optimizer"]["init_args"]["lr"] == recipe["lr"] == 2 * wide["g_optimizer"]["init_args"]["lr"]
    dcgan_g = printed_model("r3gan-dcgan-g", tmp_path)
    assert {key for key in recipe if dcgan_g.get(key) != recipe[key]} == {"generator"}
    assert dcgan_g["generator"]["class_path"] == "lightning_faces.nets.DCGANGenerator"
    assert dcgan_g["discriminator"] == recipe["discriminator"]
    linear = printed_model("r3gan-linear-stem", tmp_path)
    assert {key for key in recipe if linear.get(key) != recipe[key]} == {"generator"}
    assert linear["generator"]["init_args"] == {**recipe["generator"]["init_args"], "stem": "linear"}
