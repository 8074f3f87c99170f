import copy
import pickle
import traceback

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_faces import objectives, regularizers
from lightning_faces.callbacks import ProgressBar, SampleGrid
from lightning_faces.checkpoint import SafeCheckpointIO, load_checkpoint
from lightning_faces.data import SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN, dcgan_adam
from lightning_faces.objectives import NonSaturating
from lightning_faces.regularizers import FeatureMatching, HistoricalAveraging
from tests.conftest import tiny_gan

make_model = tiny_gan


def train(tmp_path, model: GAN, steps: int, callbacks=(), data=None, ckpt_path=None, **trainer_kwargs) -> L.Trainer:
    data = data or SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        plugins=[SafeCheckpointIO()],
        **{"enable_checkpointing": False, **trainer_kwargs},
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


def adam_steps(trainer: L.Trainer) -> tuple[int, int]:
    """How many times D's and G's optimizers stepped (Adam keeps the count per parameter)."""
    counts = []
    for optimizer in trainer.optimizers:
        states = list(optimizer.state.values())
        counts.append(int(states[0]["step"]) if states else 0)
    return counts[0], counts[1]


def snapshot(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in net.parameters()])


def test_each_batch_updates_d_then_g_and_global_step_counts_batches(tmp_path):
    model = make_model()
    trainer = train(tmp_path, model, steps=5)
    assert adam_steps(trainer) == (5, 5)
    assert trainer.global_step == 5 and model.iteration == 5


def test_d_steps_per_g_step_updates_g_every_kth_batch(tmp_path):
    model = make_model(d_steps_per_g_step=3)
    trainer = train(tmp_path, model, steps=6)
    assert adam_steps(trainer) == (6, 2)
    assert trainer.global_step == 6


def test_g_steps_per_d_step_updates_g_k_times_per_batch(tmp_path):
    trainer = train(tmp_path, make_model(g_steps_per_d_step=3), steps=2)
    assert adam_steps(trainer) == (2, 6)


@pytest.mark.parametrize("fresh", [False, True])
def test_g_learns_from_the_fakes_d_saw_in_one_g_pass_unless_fresh_latents(tmp_path, fresh):
    model = make_model(fresh_latents=fresh)
    generator, discriminator = copy.deepcopy(model.generator), copy.deepcopy(model.discriminator)
    reals, g_passes = [], []
    model.generator.register_forward_hook(lambda *_: g_passes.append(1))
    step = model.training_step

    def recorded(batch, batch_idx):
        reals.append(batch[0].clone())
        return step(batch, batch_idx)

    model.training_step = recorded
    train(tmp_path, model, steps=1)
    assert len(g_passes) == (2 if fresh else 1)

    # the classic DCGAN loop by hand, on the same batch and latents: G(z) once, D on its
    # detached output, then G through the updated D on the same fakes
    model.iteration = 0
    latents = model.genes.for_iteration(reals[0].shape[0], iteration=0, slot=0)
    d_opt, g_opt = dcgan_adam(discriminator.parameters()), dcgan_adam(generator.parameters())
    objective = NonSaturating()
    fake = generator(latents)
    real_logits = discriminator(reals[0]).logits
    objective.discriminator_loss(real_logits, discriminator(fake.detach()).logits).backward()
    d_opt.step()
    objective.generator_loss(real_logits.detach(), discriminator(fake).logits).backward()
    g_opt.step()
    torch.testing.assert_close(snapshot(model.discriminator), snapshot(discriminator))
    same_g = torch.allclose(snapshot(model.generator), snapshot(generator), rtol=1e-5, atol=1e-7)
    assert same_g != fresh  # fresh latents: G's update came from another batch of fakes


def test_a_d_step_moves_only_d(tmp_path):
    model = make_model(d_steps_per_g_step=100)  # G never reaches its turn in 3 batches
    g_before, d_before = snapshot(model.generator), snapshot(model.discriminator)
    train(tmp_path, model, steps=3)
    assert torch.equal(snapshot(model.generator), g_before)
    assert not torch.equal(snapshot(model.discriminator), d_before)


def test_d_is_skipped_while_its_accuracy_is_above_the_threshold(tmp_path):
    model = make_model(d_skip_accuracy=-1.0)  # accuracy is always above -1: D never steps
    g_before, d_before = snapshot(model.generator), snapshot(model.discriminator)
    trainer = train(tmp_path, model, steps=3)
    assert torch.equal(snapshot(model.discriminator), d_before)
    assert not torch.equal(snapshot(model.generator), g_before)
    assert adam_steps(trainer) == (0, 3) and trainer.logged_metrics["train/d_skipped"] == 1
    trainer = train(tmp_path, make_model(d_skip_accuracy=1.0), steps=3)  # never above 1: never skipped
    assert adam_steps(trainer) == (3, 3)


def test_losses_and_discriminator_outputs_are_logged(tmp_path):
    model = make_model()
    trainer = train(tmp_path, model, steps=2)
    for key in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/d_accuracy"):
        assert key in trainer.logged_metrics
    assert 0 <= trainer.logged_metrics["train/d_real"] <= 1
    shown = ProgressBar().get_metrics(trainer, model)
    assert set(model.progress) == {"d_loss", "D(x)", "D(G(z))"} and all(key in shown for key in model.progress)


def test_the_step_and_the_progress_bar_read_the_device_only_at_logging_intervals(tmp_path, monkeypatch):
    reads = []

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):  # reads by the training step, the logging and the bar
            # (Adam's step counts are host tensors: their reads never wait for a device, so
            # torch's own are left out)
            callers = [frame.filename for frame in traceback.extract_stack(limit=12)]
            if not any("torch/optim" in name or "torch/utils/data" in name for name in callers):
                reads.append(name)
            return original(self, *args, **kwargs)

        return counted

    # every way a value reaches the host: each waits for the device to finish the step
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=40,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=20,
        callbacks=[ProgressBar()],
        default_root_dir=tmp_path,
    )
    trainer.fit(make_model(), SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8))
    # .item() waits for the device: before, the bar read 3 values per refresh (120+ here); now
    # values move to the host at the 2 logging intervals only (loggers off in this run)
    assert len(reads) < 20, reads


@pytest.mark.parametrize(("smoothing", "smooth_fake"), [("none", True), ("one_sided", True), ("random", False)])
def test_label_smoothing_reaches_ds_loss(tmp_path, monkeypatch, smoothing, smooth_fake):
    seen = []
    original = objectives.binary_cross_entropy_loss

    def recording(real_logits, fake_logits, real_targets, fake_targets):
        seen.append((real_targets.clone(), fake_targets.clone()))
        return original(real_logits, fake_logits, real_targets, fake_targets)

    monkeypatch.setattr(objectives, "binary_cross_entropy_loss", recording)
    train(tmp_path, make_model(objective=NonSaturating(smoothing, smooth_fake)), steps=2)
    real, fake = seen[0]
    if smoothing == "none":
        assert (real == 1).all() and (fake == 0).all()
    elif smoothing == "one_sided":
        assert torch.allclose(real, torch.full_like(real, 0.9)) and (fake == 0).all()
    else:
        assert ((real >= 0.8) & (real <= 1.0)).all() and real.std() > 0 and (fake == 0).all()


def test_feature_matching_alone_trains_g_on_ds_features(tmp_path, monkeypatch):
    calls = []
    original = regularizers.feature_matching_loss

    def recording(real_features, fake_features):
        loss = original(real_features, fake_features)
        calls.append((real_features.shape, loss.detach()))
        return loss

    monkeypatch.setattr(regularizers, "feature_matching_loss", recording)
    model = make_model(adversarial_weight=0.0, g_regularizers=[FeatureMatching(2.0)])
    g_before = snapshot(model.generator)
    trainer = train(tmp_path, model, steps=2)
    assert len(calls) == 2 and calls[0][0] == (8, 8, 4, 4)  # D's last block: 2 x width at 4x4
    assert trainer.logged_metrics["train/g_loss"] == pytest.approx(2.0 * calls[-1][1].item(), rel=1e-5)
    assert not torch.equal(snapshot(model.generator), g_before)
    with pytest.raises(FacesError, match="G has no loss"):
        make_model(adversarial_weight=0.0)


def test_historical_averaging_holds_players_near_their_past(tmp_path):
    def drift(weight: float) -> float:
        torch.manual_seed(0)
        model = make_model(d_regularizers=[HistoricalAveraging(weight)], g_regularizers=[HistoricalAveraging(weight)])
        start = snapshot(model.discriminator)
        train(tmp_path, model, steps=8)
        return (snapshot(model.discriminator) - start).norm().item()

    assert drift(1000.0) < 0.5 * drift(0.0)
    model = make_model(d_regularizers=[HistoricalAveraging(0.1)], g_regularizers=[HistoricalAveraging(0.1)])
    trainer = train(tmp_path, model, steps=4)
    g_average, d_average = model.g_regularizers[0].average, model.d_regularizers[0].average
    assert int(g_average.count) == 5 and int(d_average.count) == 5  # start + 4 updates
    assert g_average.penalty(model.generator).item() > 0
    assert trainer.logged_metrics["train/g_historical_averaging"] > 0


def test_gradient_clipping_bounds_each_update(tmp_path):
    def sgd(params):
        return torch.optim.SGD(params, lr=1.0)

    def d_change(clip):
        torch.manual_seed(0)
        model = make_model(d_optimizer=sgd, gradient_clip_norm=clip, d_steps_per_g_step=100)
        before = snapshot(model.discriminator)
        train(tmp_path, model, steps=1)
        return (snapshot(model.discriminator) - before).norm().item()

    assert d_change(1e-3) == pytest.approx(1e-3, rel=1e-3)  # one SGD step of lr 1 on a gradient of norm 1e-3
    assert d_change(None) > 1e-2


def test_virtual_batch_norm_trains_and_round_trips_through_a_checkpoint(tmp_path):
    model = make_model(g_norm="virtual", d_norm="virtual", vbn_reference_size=6)
    trainer = train(tmp_path, model, steps=3)
    assert model.discriminator.reference.shape == (6, 3, 16, 16)
    path = tmp_path / "vbn.ckpt"
    trainer.save_checkpoint(path)
    loaded = make_model(g_norm="virtual", d_norm="virtual", vbn_reference_size=6)
    loaded.restore(load_checkpoint(path))
    z = torch.randn(3, 8)
    torch.testing.assert_close(loaded.generate(z), model.generate(z))
    torch.testing.assert_close(loaded.discriminator.reference, model.discriminator.reference)


def test_sample_grids_are_written_at_start_and_end(tmp_path):
    train(tmp_path, make_model(), steps=3, callbacks=[SampleGrid(every_n_steps=2)])
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert names == ["step_0000000.png", "step_0000002.png", "step_0000003.png"]
    # a 2x2 grid of 16 px samples shown 4x (64 px cells), with 2 px padding
    grid = np.asarray(Image.open(tmp_path / "samples" / names[-1]))
    assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)
    cell = grid[2:66, 2:66]
    assert (cell[::4, ::4] == cell[3::4, 3::4]).all()  # each generated pixel is a 4x4 block


class _Exploit:
    def __reduce__(self):
        return (print, ("this ran on load",))


def test_checkpoints_with_pickled_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, f)
    with pytest.raises(FacesError, match="beyond tensors and plain data"):
        load_checkpoint(path)
    assert "this ran on load" not in capsys.readouterr().out


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def dies_mid_write(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # preempted while writing

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert int(io.load_checkpoint(path)["step"]) == 1  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no temporary file is left


def test_atomically_written_files_get_an_ordinary_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        SafeCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644  # readable by a team, like torch.save's


def test_generator_ema_averages_g_and_is_what_samples_use(tmp_path):
    model = make_model(ema_decay=0.5)
    start = snapshot(model.generator)
    train(tmp_path, model, steps=1)  # one G step: ema = 0.5 * start + 0.5 * G
    torch.testing.assert_close(snapshot(model.generator_ema), 0.5 * start + 0.5 * snapshot(model.generator))
    z = torch.randn(3, 8)
    model.generator_ema.eval()
    torch.testing.assert_close(model.generate(z), model.generator_ema(z))
    assert not torch.allclose(model.generate(z), model.generator.eval()(z))
    path = tmp_path / "ema.ckpt"
    model.trainer.save_checkpoint(path)
    loaded = make_model(ema_decay=0.5)
    loaded.restore(load_checkpoint(path))
    torch.testing.assert_close(snapshot(loaded.generator_ema), snapshot(model.generator_ema))
    with pytest.raises(FacesError, match="ema_decay must be between 0 and 1"):
        make_model(ema_decay=1.5)


def test_the_ema_generator_samples_with_batch_statistics_of_its_own_weights(tmp_path):
    model = make_model(ema_decay=0.9, ema_statistics_samples=128)
    train(tmp_path, model, steps=3)
    with torch.no_grad():  # the EMA's weights now differ from G's: give it a very different first layer
        model.generator_ema.net[0].weight.mul_(3.0)
    model.iteration += 1  # a new iteration: statistics are estimated again
    first_norm = next(m for m in model.generator_ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    g_norm = next(m for m in model.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.generate(torch.randn(4, 8))
    # what the EMA's first layer puts out, on the latents the statistics are estimated from
    seeded = torch.Generator().manual_seed(model.hparams.seed + 2)
    latents = torch.cat([torch.randn(64, 8, generator=seeded) for _ in range(2)])
    with torch.no_grad():
        out = model.generator_ema.net[0](latents.view(-1, 8, 1, 1))
    torch.testing.assert_close(first_norm.running_mean, out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first_norm.running_mean, g_norm.running_mean, atol=1e-3)  # not G's
    assert first_norm.momentum == g_norm.momentum  # momentum restored after the estimate


@pytest.mark.parametrize(("setting", "expected"), [(True, True), (None, True), (False, False)])
def test_channels_last_keeps_the_networks_and_batches_in_that_layout(tmp_path, setting, expected):
    model = make_model(channels_last=setting)  # None, the default: on for a CPU (measured faster)
    layouts = []
    step = model.training_step

    def recorded(batch, batch_idx):
        step(batch, batch_idx)
        layouts.append(model._channels_last)

    model.training_step = recorded
    trainer = train(tmp_path, model, steps=2)
    assert trainer.global_step == 2 and layouts == [expected, expected]
    convs = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == expected for w in convs)


@pytest.mark.slow  # inductor compiles G's and D's passes: about 30 s on 2 cores
def test_compile_trains_g_and_d_compiled_to_the_weights_of_eager_training(tmp_path):
    trained = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = make_model(compile=compile)
        keys, compiling = set(model.state_dict()), []
        for net in (model.generator, model.discriminator):  # hooks run inside the compiled call
            net.register_forward_hook(lambda *_, seen=compiling: seen.append(torch.compiler.is_compiling()))
        trainer = train(tmp_path, model, steps=2)
        assert trainer.global_step == 2 and set(model.state_dict()) == keys  # checkpoints unchanged
        trained[compile] = snapshot(model.generator), snapshot(model.discriminator), compiling
    assert trained[False][2] and not any(trained[False][2])
    assert trained[True][2] and all(trained[True][2])  # every pass of G and D ran compiled
    for eager, compiled in zip(trained[False][:2], trained[True][:2], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_bf16_mixed_precision_trains_with_manual_optimization(tmp_path):
    model = make_model()
    before = snapshot(model.generator)
    trainer = train(tmp_path, model, steps=2, precision="bf16-mixed")
    assert trainer.global_step == 2
    assert not torch.equal(snapshot(model.generator), before)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_sync_batchnorm_on_cpu_stops_with_a_one_line_reason(tmp_path):
    # trainer.sync_batchnorm converts batch norm to SyncBatchNorm, which torch runs on CUDA only
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(make_model())
    with pytest.raises(FacesError, match="sync_batchnorm needs GPUs"):
        train(tmp_path, model, steps=1)


def test_linear_lr_decay_falls_to_zero_at_max_steps_and_needs_it(tmp_path):
    model = make_model(lr_decay="linear")
    trainer = train(tmp_path, model, steps=4)
    d_lr, g_lr = (optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers)
    assert d_lr == g_lr == 0.0  # 2e-4 * (1 - 4/4)
    model = make_model(lr_decay="linear")
    with pytest.raises(FacesError, match="lr_decay linear decays to 0 at trainer.max_steps"):
        train(tmp_path, model, steps=-1, max_epochs=1)
