import pytest
import torch

from lightning_faces.cli import main
from tests.conftest import REPO, celeba_args, run_cli

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_readme_names_every_shipped_config():
    # what a user can pick from: each file in configs/ is in README (and the list is not empty)
    readme = (REPO / "README.md").read_text()
    assert CONFIGS and [c.name for c in CONFIGS if f"configs/{c.name}" not in readme] == []


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, capsys):
    # an overlay ("# Overlay: ..." on its first line) is read on top of the config it completes
    base = ["--config", str(REPO / "configs" / "dcgan.yaml")] if config.read_text().startswith("# Overlay") else []
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_wrong_config_key_stops_with_its_name(tmp_path, capsys, fake_celeba):
    code, err = run_main(["fit", *celeba_args(fake_celeba, tmp_path), "--model.learning_rate", "0.1"], capsys)
    assert code != 0 and "learning_rate" in err
    assert len(err.strip().splitlines()) <= 3  # the reason and where --help is, no usage dump


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_missing_data_stops_before_training_with_one_line(tmp_path, capsys):
    code, err = run_main(["fit", *celeba_args(tmp_path / "nothing-here", tmp_path)], capsys)
    line = one_line_error(code, err)
    assert "CelebA not found" in line and "list_attr_celeba.txt" in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_data_dir_that_is_a_file_stops_with_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_main(["fit", *celeba_args(tmp_path / "file", tmp_path)], capsys)
    assert "is a file, not a folder" in one_line_error(code, err)


def test_image_size_the_network_cannot_make_stops_with_one_line(tmp_path, capsys, fake_celeba):
    code, err = run_main(["fit", *celeba_args(fake_celeba, tmp_path), "--data.image_size", "48"], capsys)
    assert "image_size 48 is not supported" in one_line_error(code, err)


def test_batch_larger_than_the_dataset_stops_with_one_line(tmp_path, capsys, fake_celeba):
    code, err = run_main(["fit", *celeba_args(fake_celeba, tmp_path, batch_size=100)], capsys)
    assert "batch_size 100 is larger than the training set (16 images)" in one_line_error(code, err)


def test_fit_then_resume_continues_where_the_checkpoint_left_off(tmp_path, fake_celeba):
    """The real entry point, twice: train 6 iterations, then resume from last.ckpt to 10."""
    runs = tmp_path / "runs"
    first = run_cli(["fit", *celeba_args(fake_celeba, runs), "--trainer.max_steps", "6"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = runs / "dcgan" / "version_0"
    assert (run / "samples" / "step_0000000.png").exists() and (run / "samples" / "step_0000006.png").exists()
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 6 and saved["iteration"] == 6

    # fixed latents that the seed cannot make: only loading them from the checkpoint gives them back
    marked = torch.arange(saved["state_dict"]["genes.fixed_latents"].numel(), dtype=torch.float32)
    saved["state_dict"]["genes.fixed_latents"] = marked.view_as(saved["state_dict"]["genes.fixed_latents"])
    torch.save(saved, last)
    second = run_cli(
        ["fit", *celeba_args(fake_celeba, runs), "--trainer.max_steps", "10", "--ckpt_path", str(last)], cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = torch.load(runs / "dcgan" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 10 and resumed["iteration"] == 10  # continued, did not restart
    torch.testing.assert_close(resumed["state_dict"]["genes.fixed_latents"], saved["state_dict"]["genes.fixed_latents"])
    for optimizer in resumed["optimizer_states"]:  # Adam's own step counts continued from 6
        assert {int(state["step"]) for state in optimizer["state"].values()} == {10}
    assert (runs / "dcgan" / "version_1" / "samples" / "step_0000010.png").exists()

    # the other subcommands run from the same checkpoint
    for subcommand in ("validate", "test"):
        result = run_cli([subcommand, *celeba_args(fake_celeba, runs), "--ckpt_path", str(last)], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{'val' if subcommand == 'validate' else 'test'}/d_accuracy" in result.stdout
    predicted = run_cli(
        ["predict", *celeba_args(fake_celeba, runs), "--ckpt_path", str(last), "--data.predict_samples", "5"],
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    generated = sorted(p.name for p in runs.glob("dcgan/version_*/generated/*.png"))
    assert generated == [f"{i:06d}.png" for i in range(5)]


def test_sngan_trains_with_n_dis_and_linear_decay_and_r1_and_diffaugment_switch_on_from_yaml(tmp_path, fake_celeba):
    runs = tmp_path / "runs"
    extras = tmp_path / "extras.yaml"  # an overlay, as a user would write one
    extras.write_text(
        "model:\n"
        "  d_regularizers:\n"
        "    - class_path: lightning_faces.regularizers.R1\n"
        "      init_args: {gamma: 1.0, every: 2}\n"
        "  augment:\n"
        "    class_path: lightning_faces.augment.DiffAugment\n"
    )
    args = [*celeba_args(fake_celeba, runs, config="sngan.yaml"), "--config", str(extras)]
    result = run_cli(["fit", *args, "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = runs / "sngan" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    d_state, g_state = saved["optimizer_states"]
    assert {int(s["step"]) for s in d_state["state"].values()} == {6}  # D every iteration
    assert {int(s["step"]) for s in g_state["state"].values()} == {1}  # G at the 5th only (n_dis 5)
    assert [group["lr"] for group in d_state["param_groups"]] == [0.0]  # linear decay reaches 0 at max_steps
    assert saved["hyper_parameters"]["d_regularizers"][0]["class_path"] == "lightning_faces.regularizers.R1"
    assert any("parametrizations.weight.original" in key for key in saved["state_dict"])  # spectral norm
    metrics = (run / "metrics.csv").read_text()
    assert "train/d_r1" in metrics.splitlines()[0]
