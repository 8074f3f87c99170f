"""The benchmark scripts run end to end (tiny settings, fake CelebA), so they cannot rot."""

from __future__ import annotations

import json

from benchmarks import data, train


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
    assert len(pipelines) == 3 and all(row["images/s"] > 0 for row in result["throughput"])
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
        "--json",
        str(tmp_path / "train.json"),
    ]
    result = train.main(args)
    assert [len(row["rounds"]) for row in result["results"]] == [1, 1]
    assert result["ratio"] > 0 and json.loads((tmp_path / "train.json").read_text())["benchmark"] == "train"
