"""Real DDP on CPU: two processes (gloo) started by ``python -m lightning_faces fit``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_faces.distributed import GANDDPStrategy, check_strategy, register
from lightning_faces.sampling import training_latents
from tests.conftest import celeba_args, flags, run_cli, tiny_gan

pytestmark = pytest.mark.timeout(600)  # a collective that never matches hangs: fail instead


def fit(
    tmp: Path, data: Path, name: str, devices: int, batch_size: int, extra: list[str], config: str = "dcgan.yaml"
) -> dict[int, dict]:
    """Trains 6 iterations on ``devices`` CPU processes; returns each rank's final state."""
    args = [
        "fit",
        *celeba_args(data, tmp / name, batch_size=batch_size, config=config),
        *flags({"--trainer.devices": devices, "--trainer.max_steps": 6, "--data.flip": "false"}),
        *flags({"--data.val_split": "null", "--trainer.log_every_n_steps": 1}),
        "--trainer.callbacks+=tests.probes.DumpState",
        f"--trainer.callbacks.folder={tmp / name / 'state'}",
        *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        *extra,
    ]
    result = run_cli(args, cwd=tmp, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    states = {int(p.stem[4:]): torch.load(p, weights_only=True) for p in (tmp / name / "state").glob("rank*.pt")}
    assert sorted(states) == list(range(devices))
    return states


def logged(tmp: Path, name: str, key: str) -> list[tuple[int, float]]:
    (metrics,) = (tmp / name).rglob("metrics.csv")
    with metrics.open() as file:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(file) if row.get(key)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    assert keys and keys == [k for k in b if k.startswith(prefix) and b[k].is_floating_point()]
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def test_ranks_hold_identical_networks_with_every_trick_on(tmp_path, fake_celeba):
    # batch norm in G and D (D's two forward passes before one backward), EMA, historical
    # averaging, feature matching, D skipping (a decision the ranks must take together)
    tricks = tmp_path / "tricks.yaml"
    tricks.write_text(
        "model:\n"
        "  ema_decay: 0.9\n"
        "  d_skip_accuracy: 0.6\n"
        "  g_steps_per_d_step: 2\n"
        "  d_regularizers:\n"
        "    - {class_path: lightning_faces.regularizers.HistoricalAveraging, init_args: {weight: 0.1}}\n"
        "  g_regularizers:\n"
        "    - {class_path: lightning_faces.regularizers.HistoricalAveraging, init_args: {weight: 0.1}}\n"
        "    - {class_path: lightning_faces.regularizers.FeatureMatching, init_args: {weight: 1.0}}\n"
    )
    states = fit(tmp_path, fake_celeba, "ddp", devices=2, batch_size=4, extra=["--config", str(tricks)])
    rank0, rank1 = states[0], states[1]
    assert rank0["world_size"] == 2
    assert rank0["iteration"] == rank1["iteration"] == rank0["global_step"] == 6  # iterations, not optimizer steps
    assert rank0["optimizer_steps"] == rank1["optimizer_steps"]
    for name, value in rank0["state_dict"].items():
        # parameters, Adam-independent buffers, batch-norm statistics, EMA, running averages
        assert torch.equal(value, rank1["state_dict"][name]), f"{name} differs between ranks"
    # and training happened: G moved away from the EMA that trails it
    assert (
        max_difference(
            rank0["state_dict"],
            {k.replace("generator_ema.", "generator."): v for k, v in rank0["state_dict"].items()},
            "generator.",
        )
        > 0
    )


def test_ranks_hold_identical_spectral_norm_vectors_with_r1_and_diffaugment(tmp_path, fake_celeba):
    # SNGAN: each forward of D in training mode runs a power iteration that updates the
    # spectral-norm vectors u and v (buffers, not averaged by DDP). They depend on D's weights
    # only, which DDP keeps equal, so each rank's own updates keep them equal, as long as
    # every rank runs D the same number of times. R1 (lazy, a double backward through D's DDP
    # wrapper) and DiffAugment (random per rank) must not break that. Conditional on two
    # attributes: D's projection layer has vectors of its own, and each rank shuffles its own
    # batch's attribute rows for the fakes while the pool of real rows must agree.
    extras = tmp_path / "sngan-extras.yaml"
    extras.write_text(
        "model:\n"
        "  d_steps_per_g_step: 2\n"
        "  ema_decay: 0.9\n"
        "  d_regularizers: [{class_path: lightning_faces.regularizers.R1, init_args: {gamma: 1.0, every: 2}}]\n"
        "  augment: {class_path: lightning_faces.augment.DiffAugment}\n"
        "data:\n"
        "  init_args: {attributes: [Male, Smiling]}\n"
    )
    states = fit(
        tmp_path, fake_celeba, "sn", devices=2, batch_size=4, extra=["--config", str(extras)], config="sngan.yaml"
    )
    rank0, rank1 = states[0]["state_dict"], states[1]["state_dict"]
    vectors = [name for name in rank0 if name.endswith(("._u", "._v"))]
    assert len(vectors) > 10  # every conv and the linear head of the ResNet D
    assert "discriminator.attribute_head.layer.parametrizations.weight.0._u" in vectors
    assert rank0["genes.attribute_pool"].shape == (10_000, 2) and rank0["genes.attribute_pool"].sum() > 0
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"{name} differs between ranks"
    assert states[0]["iteration"] == 6


def test_ranks_hold_identical_networks_with_the_modern_recipe(tmp_path, fake_celeba):
    # configs/r3gan.yaml: RpGAN, R1 and R2 at every D step (two double backwards through D's DDP
    # wrapper), an EMA by half-life with its ramp (its beta read from the images seen, counted
    # over both ranks), scheduled lr and beta2, and DiffAugment on every image (random per rank)
    # (the config's half-life starts at 0, an EMA equal to G: here a fixed one, capped by the ramp)
    extra = ["--model.augment.init_args.probability", "1.0", "--model.ema_half_life", "1000"]
    states = fit(tmp_path, fake_celeba, "r3", devices=2, batch_size=4, extra=extra, config="r3gan.yaml")
    rank0, rank1 = states[0]["state_dict"], states[1]["state_dict"]
    assert "discriminator.pool.weight" in rank0  # R3GAN's networks
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"{name} differs between ranks"
    as_generator = {k.replace("generator_ema.", "generator."): v for k, v in rank0.items()}
    assert max_difference(rank0, as_generator, "generator.") > 0
    assert states[0]["images_seen"] == states[1]["images_seen"] == 6 * 4 * 2  # counted over both ranks
    betas = [value for _, value in logged(tmp_path, "r3", "train/ema_beta")]
    assert len(betas) == 6 and 0 <= betas[0] < betas[-1] < 1  # the ramp lengthens the average as images come


def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(tmp_path, fake_celeba):
    """16 training images: 1 process x batch 16 and 2 processes x batch 8 see all 16 in every
    iteration (one batch per epoch), so they take the same gradient steps on the same latents.

    Virtual batch norm normalizes each example by a fixed reference batch, so a rank's output
    does not depend on which examples share its batch (with batch norm it would, unless synced).
    """
    shared = flags(
        {
            "--model.generator.init_args.norm": "virtual",
            "--model.discriminator.init_args.norm": "virtual",
            "--model.vbn_reference_size": 8,
            "--model.ema_decay": 0.9,
            "--trainer.precision": "32-true",  # the float32 sums below; fit picks bf16 on a bf16 CPU
            "--fid.every_n_steps": 6,
            "--fid.num_samples": 12,
            "--fid.batch_size": 4,
            "--fid.feature_extractor": "tests.test_metrics.TinyFeatures",
        }
    )

    def own_cache(name: str) -> list[str]:  # each run computes its real statistics itself
        return flags({"--fid.cache_dir": tmp_path / f"fid-cache-{name}"})

    two = fit(tmp_path, fake_celeba, "two", devices=2, batch_size=8, extra=shared + own_cache("two"))[0]["state_dict"]
    one = fit(tmp_path, fake_celeba, "one", devices=1, batch_size=16, extra=shared + own_cache("one"))[0]["state_dict"]
    # control: one process with batch 8 takes other steps (half the data per iteration)
    half = fit(tmp_path, fake_celeba, "half", devices=1, batch_size=8, extra=shared + own_cache("half"))
    half = half[0]["state_dict"]

    # the real statistics, computed by 2 ranks (each its share, summed) and by 1 process: the same
    (cached_two,) = (tmp_path / "fid-cache-two").glob("real-*.pt")
    (cached_one,) = (tmp_path / "fid-cache-one").glob("real-*.pt")
    real_two, real_one = torch.load(cached_two, weights_only=True), torch.load(cached_one, weights_only=True)
    assert int(real_two["real_features_num_samples"]) == int(real_one["real_features_num_samples"]) == 12
    for name in ("real_features_sum", "real_features_cov_sum"):
        torch.testing.assert_close(real_two[name], real_one[name], rtol=1e-6, atol=1e-6)

    # The runs differ only in the order of float32 sums (gloo's all-reduce of two half-batch
    # gradients vs one batch): ~1e-7 relative per gradient. Adam's step is lr * m / (sqrt(v) +
    # eps); a relative change e in the gradient changes it by about lr * e, and for gradients
    # near 0 eps (1e-8) damps the step instead of amplifying the noise. Six steps of lr 2e-4
    # then differ by ~1e-9 (measured: 7e-9); 1e-6 leaves room for other CPUs' summation orders
    # and stays ~1000x below the control (measured: 1.9e-3).
    difference, control = max_difference(one, two), max_difference(one, half)
    assert difference < 1e-6, difference
    assert control > 100 * 1e-6, control

    # FID over all ranks' samples, computed once: the same value as one process scoring them
    # all (a rank scoring only its share, or both ranks the same latents, would differ). With
    # weights equal to 1e-8 the values agree to ~1e-7; the control's G, 2e-3 away, is 1.5e-4 off.
    (fid_two,), (fid_one,) = logged(tmp_path, "two", "val/fid"), logged(tmp_path, "one", "val/fid")
    assert fid_two[0] == fid_one[0] == 6
    assert fid_two[1] == pytest.approx(fid_one[1], rel=1e-5)


def test_each_rank_draws_its_own_slice_of_the_global_latent_batch():
    def latents(iteration: int, slot: int, count: int, world: int, rank: int) -> torch.Tensor:
        return training_latents(0, iteration, slot, count, 8, world, rank)

    whole = latents(0, 0, 6, world=1, rank=0)
    slices = [latents(0, 0, 3, world=2, rank=rank) for rank in range(2)]
    assert not torch.equal(slices[0], slices[1])
    assert torch.equal(torch.cat(slices), whole)
    # another use in the same iteration, or the next iteration, draws other latents
    assert not torch.equal(latents(0, 1, 6, world=1, rank=0), whole)
    assert not torch.equal(latents(1, 0, 6, world=1, rank=0), whole)
    # and the GAN's step draws exactly these (its trainer is absent here: one process)
    module = tiny_gan()
    module.iteration = 1
    assert torch.equal(module.genes.for_iteration(6, module.iteration, slot=0), latents(1, 0, 6, world=1, rank=0))


def test_gan_wrappers_do_not_copy_buffers_in_place_before_each_forward(tmp_path):
    # DDP's default copies rank 0's buffers into every module before each forward pass; with
    # batch norm and D's two passes before one backward that copy is the in-place error (torch
    # issue 175024). The GAN wrappers leave it out (and average the statistics per iteration).
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        strategy = GANDDPStrategy(parallel_devices=[torch.device("cpu")])
        assert not strategy.wrap(nn.BatchNorm2d(3)).will_sync_module_buffers()
        assert DistributedDataParallel(nn.BatchNorm2d(3)).will_sync_module_buffers()  # the default does
    finally:
        dist.destroy_process_group()


def test_the_names_ddp_and_auto_give_the_gan_strategy_with_lightnings_settings():
    # Lightning resolves "auto" on several devices to the name "ddp"; each DDP name keeps its
    # own settings (start method, unused-parameter search) with the GAN's strategy class. The
    # CLI registers them (a copy of Lightning's registry here: this process's stays as it is)
    from lightning.pytorch.strategies import StrategyRegistry

    registry = type(StrategyRegistry)(StrategyRegistry)
    register(registry)
    for name, start_method in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("gan_ddp", "popen")):
        strategy = registry.get(name)
        assert type(strategy) is GANDDPStrategy and strategy._start_method == start_method
    assert registry.get("ddp_find_unused_parameters_true").ddp_options["find_unused_parameters"] is True


def in_fresh_interpreter(code: str) -> None:
    """Runs ``code`` in a new Python process (a registry untouched by other tests); it asserts."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_importing_the_package_changes_no_strategy_name():
    # a program that imports lightning_faces only to load a generator keeps Lightning's names
    code = (
        "from lightning.pytorch.strategies import StrategyRegistry as R\n"
        "before = {k: (v['strategy'], v['init_params']) for k, v in R.items()}\n"
        "import lightning_faces, lightning_faces.cli, lightning_faces.tools\n"
        "after = {k: (v['strategy'], v['init_params']) for k, v in R.items()}\n"
        "assert before == after, sorted(set(after.items()) ^ set(before.items()), key=str)\n"
    )
    in_fresh_interpreter(code)


def test_after_the_cli_registers_auto_on_several_devices_gives_the_gan_strategy():
    # what make_cli does before it builds a Trainer; in a fresh interpreter, as the CLI runs
    code = (
        "import lightning as L\n"
        "from lightning_faces.distributed import GANDDPStrategy, register\n"
        "register()\n"
        "trainer = L.Trainer(accelerator='cpu', devices=2, logger=False)\n"
        "assert type(trainer.strategy) is GANDDPStrategy, type(trainer.strategy)\n"
    )
    in_fresh_interpreter(code)


def test_a_plain_ddp_strategy_built_in_python_stops_with_one_line():
    from lightning_faces.errors import FacesError

    with pytest.raises(
        FacesError,
        match="DDPStrategy would wrap G and D as one module: pass strategy=lightning_faces.distributed.GANDDPStrategy",
    ):
        check_strategy(DDPStrategy())
    check_strategy(GANDDPStrategy())  # the GAN's own passes


@pytest.mark.parametrize("name", ["DeepSpeedStrategy", "FSDPStrategy"])
def test_strategies_other_than_ddp_stop_with_one_line(name):
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_faces.errors import FacesError

    # DeepSpeed's strategy subclasses DDPStrategy (FSDP's does not): both must be refused.
    # Lightning's DeepSpeedStrategy needs the deepspeed package to construct: a stand-in
    strategy = type(name, (DDPStrategy,), {}) if name == "DeepSpeedStrategy" else FSDPStrategy
    with pytest.raises(FacesError, match=f"strategy {name} is not supported: use ddp"):
        check_strategy(strategy.__new__(strategy))


def test_two_ranks_grow_across_phase_changes_and_stay_identical(tmp_path, fake_celeba):
    # ProGAN's recipe (WGAN-GP: a double backward through D's wrapper; EMA; Adam reset at each new
    # resolution) at 16px, growing every few iterations: 8 images an iteration over both ranks,
    # so 4x4 for one iteration, 8x8 fading in over two and stable for one, then 16x16 fading in.
    # Blocks above the level and an RGB layer after its fade-out get no gradient: DDP must not
    # wait for them, and the ranks must still agree on every weight.
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "model:\n"
        "  growth:\n"
        "    class_path: lightning_faces.growth.Growth\n"
        "    init_args: {stable_images: 8, fade_images: 16, batch_sizes: {}, reset_optimizers: true}\n"
        "  generator: {init_args: {max_channels: 16}}\n"
        "  discriminator: {init_args: {max_channels: 16}}\n"
    )
    states = fit(
        tmp_path, fake_celeba, "grow", devices=2, batch_size=4, extra=["--config", str(schedule)],
        config="progressive.yaml",
    )  # fmt: skip
    rank0, rank1 = states[0]["state_dict"], states[1]["state_dict"]
    assert states[0]["iteration"] == 6
    for net in ("generator", "discriminator", "generator_ema"):
        assert (int(rank0[f"{net}.level"]), float(rank0[f"{net}.alpha"])) == (2, 0.5)  # 16x16, half in
    assert states[0]["optimizer_steps"] == states[1]["optimizer_steps"]
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"{name} differs between ranks"
    # one iteration, at 4x4, leaves the 8x8 and 16x16 blocks as built: the two ranks trained them all
    once = ["--config", str(schedule), "--trainer.max_steps", "1"]
    first = fit(tmp_path, fake_celeba, "first", devices=1, batch_size=8, extra=once, config="progressive.yaml")
    first = first[0]["state_dict"]
    for block in ("generator.blocks.0.0.weight", "generator.blocks.1.1.weight", "discriminator.blocks.1.0.weight"):
        assert not torch.equal(rank0[block], first[block]), block
