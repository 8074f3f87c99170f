"""Progressive growing: the schedule, the real images at each phase, and training across phases."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from lightning_faces.checkpoint import SafeCheckpointIO, build, load_checkpoint
from lightning_faces.data import SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.growth import Growth, Phase, real_images_at
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator
from lightning_faces.nets.progressive import ProgressiveDiscriminator, ProgressiveGenerator
from tests.conftest import REPO, flags, run_cli
from tests.test_module import train


def growing_gan(growth: Growth, **kwargs) -> GAN:
    """A 16px progressive GAN (levels 0-2: 4, 8 and 16 pixels) that trains in seconds."""
    torch.manual_seed(0)
    generator = ProgressiveGenerator(latent_dim=8, width=4, image_size=16, max_channels=8)
    discriminator = ProgressiveDiscriminator(width=4, image_size=16, max_channels=8)
    return GAN(generator, discriminator, growth=growth, **{"num_fixed_samples": 4, **kwargs})


def faces(batch_size: int = 8) -> SyntheticFacesDataModule:
    return SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=batch_size)


class Record(L.Callback):
    """What each iteration trained at: images shown before it, level, alpha, D's input size, lr."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float, int, int, float]] = []
        self.before = 0
        self.sides: list[tuple[int, int]] = []

    def on_train_start(self, trainer: L.Trainer, module: GAN) -> None:  # D's inputs: (batch, side)
        module.discriminator.register_forward_pre_hook(lambda _, inputs: self.sides.append(inputs[0].shape[::2]))

    def on_train_batch_start(self, trainer: L.Trainer, module: GAN, *args) -> None:
        self.before = module.images_shown
        self.sides = []

    def on_train_batch_end(self, trainer: L.Trainer, module: GAN, *args) -> None:
        (batch, side), *_ = self.sides
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append((self.before, int(module.generator.level), float(module.generator.alpha), batch, side, lr))


def test_the_schedule_is_stable_then_fade_and_stable_per_resolution_and_stays_at_the_last():
    growth = Growth(stable_images=100, fade_images=50)
    final = 32  # levels 0 (4x4) .. 3 (32x32)
    assert growth.phase(0, final) == Phase(0, 1.0, 0)
    assert growth.phase(99, final) == Phase(0, 1.0, 99)  # the first resolution: stable only
    assert growth.phase(100, final) == Phase(1, 0.0, 0)  # 8x8 starts fading in
    assert growth.phase(125, final) == Phase(1, 0.5, 25)
    assert growth.phase(150, final) == Phase(1, 1.0, 50)  # then is stable
    assert growth.phase(249, final) == Phase(1, 1.0, 149)
    assert growth.phase(250, final) == Phase(2, 0.0, 0)
    assert growth.images_to_reach(final) == 3 * 150
    assert growth.phase(449, final).alpha < 1 and growth.phase(449, final).level == 3
    assert growth.phase(450, final) == Phase(3, 1.0, 50)
    assert growth.phase(10**9, final)[:2] == (3, 1.0)  # the last resolution never ends
    assert growth.phase(150, final).resolution == 8
    # no fade-in: each resolution arrives whole; starting at the final size: never grows
    assert Growth(stable_images=100, fade_images=0).phase(100, final) == Phase(1, 1.0, 0)
    assert Growth(stable_images=100, start_resolution=32).phase(10**6, final) == Phase(3, 1.0, 10**6)
    assert Growth(stable_images=100, start_resolution=8).phase(0, final).resolution == 8


def test_real_images_are_averaged_down_and_blended_across_a_fade_in():
    images = torch.randn(2, 3, 16, 16)
    at_4 = real_images_at(images, 4, 1.0)
    assert at_4.shape == (2, 3, 4, 4)
    torch.testing.assert_close(at_4[:, :, 1, 2], images[:, :, 4:8, 8:12].mean(dim=(2, 3)))  # box average
    at_8 = real_images_at(images, 8, 1.0)
    below = F.interpolate(F.avg_pool2d(at_8, 2), scale_factor=2, mode="nearest")
    torch.testing.assert_close(real_images_at(images, 8, 0.0), below)  # alpha 0: the level below, doubled
    torch.testing.assert_close(real_images_at(images, 8, 0.25), 0.75 * below + 0.25 * at_8)
    assert torch.equal(real_images_at(images, 16, 1.0), images)
    with pytest.raises(FacesError, match="powers of two"):
        real_images_at(images, 6, 1.0)


def test_training_follows_the_schedule_with_batch_size_and_learning_rate_per_resolution(tmp_path):
    growth = Growth(stable_images=16, fade_images=16, batch_sizes={8: 4}, learning_rates={4: 1e-3})
    record = Record()
    model = growing_gan(growth)
    trainer = train(tmp_path, model, 12, callbacks=[record], data=faces(batch_size=8))
    shown = 0
    for before, level, alpha, batch, side, lr in record.rows:
        assert before == shown
        phase = growth.phase(shown, 16)
        assert (level, alpha, side) == (phase.level, phase.alpha, phase.resolution)  # G's, D's and the reals'
        assert batch == (4 if side == 8 else 8)
        assert lr == (1e-3 if side == 4 else 2e-4)  # listed, else the optimizer's own
        shown += batch
    assert model.images_shown == shown
    levels = [(level, alpha) for _, level, alpha, *_ in record.rows]
    assert levels[:4] == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.25)]  # 8 images a batch at 4x4, then 4 at 8x8
    assert levels[-1] == (2, 0.5)  # 16x16 fading in after 16 + 32 + 32 images
    assert trainer.global_step == 12
    # samples and FID see the final size: a lower level's pixels enlarged, each a 2x2 square
    images = model.generate(torch.randn(3, 8))
    model.grower.set_phase(1, 1.0)
    small = model.generate(torch.randn(3, 8))
    assert images.shape == small.shape == (3, 3, 16, 16)
    assert torch.equal(small[..., ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3), small)
    assert not torch.equal(images[..., ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3), images)


def test_reset_optimizers_restarts_adams_state_at_each_new_resolution(tmp_path):
    def steps_after(reset: bool) -> tuple[int, int]:
        growth = Growth(stable_images=24, fade_images=16, reset_optimizers=reset)
        trainer = train(tmp_path, growing_gan(growth), 7, data=faces(batch_size=8))
        # the most steps any parameter took (a layer joins, or leaves after its fade-out, later)
        return tuple(max(int(state["step"]) for state in o.state.values()) for o in trainer.optimizers)

    # 8 images an iteration: 4x4 for 3 iterations, then 8x8 from the 4th
    assert steps_after(reset=False) == (7, 7)
    assert steps_after(reset=True) == (4, 4)  # Adam's count restarted when 8x8 began


def test_freezing_trains_only_the_new_blocks_for_freeze_images_then_all(tmp_path):
    growth = Growth(stable_images=32, fade_images=0, freeze_images=16)

    class Snapshots(L.Callback):
        def __init__(self) -> None:
            self.states: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, module, *args) -> None:
            self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    snapshots = Snapshots()
    model = growing_gan(growth)
    train(tmp_path, model, 8, callbacks=[snapshots], data=faces(batch_size=8))
    # 8 images an iteration: 0-3 at 4x4; 4-5 at 8x8 with the old layers frozen; 6-7 all of 8x8 learns
    states = snapshots.states  # states[i]: after iteration i

    def moved(before: dict, after: dict, prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    new = ("generator.blocks.0.", "generator.to_rgb.1.", "discriminator.blocks.0.", "discriminator.from_rgb.1.")
    old = ("generator.first.", "generator.first_conv.", "discriminator.last_conv.", "discriminator.dense.")
    for before, after in zip(states[3:5], states[4:6], strict=True):  # the frozen iterations 4 and 5
        assert all(moved(before, after, prefix) for prefix in new)
        assert not any(moved(before, after, prefix) for prefix in old)
    assert all(moved(states[5], states[7], prefix) for prefix in old)  # unfrozen after 16 images
    assert moved(states[0], states[1], "generator.first.")  # and they learned before the freeze


def test_a_run_resumed_mid_fade_ends_with_the_weights_of_the_uninterrupted_run(tmp_path):
    growth = dict(stable_images=16, fade_images=24, batch_sizes={16: 4}, learning_rates={8: 5e-4})
    settings = dict(reset_optimizers=True, freeze_images=8)

    def run(steps: int, callbacks=(), ckpt_path=None) -> GAN:
        L.seed_everything(0)
        model = growing_gan(Growth(**growth, **settings), ema_decay=0.9)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=list(callbacks), plugins=[SafeCheckpointIO()])  # fmt: skip
        trainer.fit(model, faces(batch_size=8), ckpt_path=ckpt_path)
        return model

    class SaveAndStop(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: GAN, *args) -> None:
            if trainer.global_step == 5:
                mid_fade = (1, pytest.approx(2 / 3))
                assert (int(module.generator.level), float(module.generator.alpha)) == mid_fade
                trainer.save_checkpoint(tmp_path / "mid-fade.ckpt")
                trainer.should_stop = True

    uninterrupted = run(12)
    run(12, [SaveAndStop()])
    resumed = run(12, ckpt_path=tmp_path / "mid-fade.ckpt")
    # 4x4 for 16 images, 8x8 faded in over 24 and stable for 16 at batch 8, then 5 batches of 4 at 16x16
    assert resumed.images_shown == uninterrupted.images_shown == 56 + 5 * 4
    assert (int(resumed.generator.level), float(resumed.generator.alpha)) == (2, pytest.approx(16 / 24))
    for name, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    # the checkpoint holds the schedule as plain settings: it rebuilds without unpickling code
    saved = load_checkpoint(tmp_path / "mid-fade.ckpt")
    assert saved["images_shown"] == 40
    assert vars(build(saved["hyper_parameters"]["growth"], "mid-fade.ckpt")) == vars(Growth(**growth, **settings))


def test_growth_settings_that_cannot_work_stop_with_one_line(tmp_path):
    with pytest.raises(FacesError, match="needs networks that grow: model.generator DCGANGenerator"):
        GAN(DCGANGenerator(latent_dim=8, width=4, image_size=16), DCGANDiscriminator(width=4, image_size=16),
            growth=Growth())  # fmt: skip
    with pytest.raises(FacesError, match="resolution 32, above the image size 16"):
        growing_gan(Growth(batch_sizes={32: 4}))
    with pytest.raises(FacesError, match="learning_rates and model.lr_decay"):
        growing_gan(Growth(learning_rates={4: 1e-3}), lr_decay="linear")
    with pytest.raises(FacesError, match="is not a resolution"):
        Growth(start_resolution=12)
    with pytest.raises(FacesError, match="stable_images must be at least 1"):
        Growth(stable_images=0)
    with pytest.raises(FacesError, match=r"exceed data.batch_size 8.*set data.batch_size to 16"):
        train(tmp_path, growing_gan(Growth(batch_sizes={8: 16})), 1, data=faces(batch_size=8))


def test_a_progressive_run_through_the_cli_renders_full_size_faces_from_its_checkpoint(tmp_path):
    # the quickstart's recipe, tiny: the checkpoint's settings (JSON-like: resolutions as string
    # keys) must rebuild the schedule, and a run stopped at 8x8 still renders 32x32 images
    args = flags(
        {
            "--trainer.max_steps": 3,
            "--trainer.logger.init_args.save_dir": tmp_path / "runs",
            "--trainer.enable_progress_bar": "false",
            "--data.init_args.num_images": 64,
            "--data.init_args.num_val_images": 0,
            "--model.growth.init_args.stable_images": 10_000,
            "--model.generator.init_args.width": 2,
            "--model.discriminator.init_args.width": 2,
            "--model.num_fixed_samples": 4,
        }
    )
    fit = run_cli(["fit", "--config", str(REPO / "configs" / "progressive_quickstart.yaml"), *args], cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    (grid,) = (tmp_path / "runs").rglob("samples/step_0000003.png")
    model = GAN.from_checkpoint(checkpoint)
    assert model.growth.batch_sizes == {8: 32} and model.images_shown == 3 * 32
    assert model.generator.resolution == 8
    out = tmp_path / "faces"
    generate = run_cli(["generate", str(checkpoint), "--num", "2", "--out", str(out)], cwd=tmp_path)
    assert generate.returncode == 0, generate.stderr[-3000:]
    for path in sorted(out.glob("*.png")):
        image = torch.from_numpy(np.array(Image.open(path)))  # (32, 32, 3): 8x8 pixels as 4x4 squares
        assert image.shape == (32, 32, 3) and torch.equal(
            image, image[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1)
        )
    assert len(list(out.glob("*.png"))) == 2
    assert Image.open(grid).size == (2 * (64 + 2) + 2,) * 2  # 2x2 samples, 32 px shown at 64


def test_a_conditional_gan_grows_with_its_attributes(tmp_path):
    names = ["Eyeglasses", "Black_Hair"]
    torch.manual_seed(0)
    generator = ProgressiveGenerator(latent_dim=8, width=4, image_size=16, max_channels=8, attributes=names)
    discriminator = ProgressiveDiscriminator(
        width=4, image_size=16, max_channels=8, attributes=names, conditioning="auxiliary"
    )
    model = GAN(generator, discriminator, growth=Growth(stable_images=8, fade_images=16), num_fixed_samples=4)
    data = SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8, attributes=names)
    record = Record()
    train(tmp_path, model, 4, callbacks=[record], data=data)
    assert [(level, side) for _, level, _, _, side, _ in record.rows] == [(0, 4), (1, 8), (1, 8), (1, 8)]
    glasses = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert model.generate(torch.randn(2, 8), glasses).shape == (2, 3, 16, 16)  # conditioned, at full size
    assert model.genes.attribute_pool.sum() > 0  # real attribute rows were drawn for the samples


def test_fid_before_the_final_resolution_says_it_scored_enlarged_samples(tmp_path, caplog):
    from lightning_faces.metrics import FID
    from tests.test_metrics import TinyFeatures

    fid = FID(every_n_epochs=0, every_n_steps=1, num_samples=8, batch_size=8, cache_dir=str(tmp_path / "fid"),
              feature_extractor=TinyFeatures())  # fmt: skip
    model = growing_gan(Growth(stable_images=8, fade_images=0))  # 4x4, 8x8, then 16x16: one iteration each
    with caplog.at_level("INFO"):
        train(tmp_path, model, 3, callbacks=[fid], data=faces(batch_size=8))
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("FID ")]
    assert [step for step, _ in fid.history] == [1, 2, 3] and len(lines) == 3
    assert "4x4 samples enlarged to 16x16: not a final FID" in lines[0]
    assert "8x8 samples enlarged to 16x16" in lines[1]
    assert "enlarged" not in lines[2]  # the final resolution, fully in
