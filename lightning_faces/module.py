"""The GAN LightningModule: manual optimization, D then G, with the stabilization tricks."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy
from torch import nn

from lightning_faces.averaging import ParameterAverage
from lightning_faces.data import to_float, to_uint8
from lightning_faces.distributed import GANDDPStrategy, average_over_ranks, batch_norm_statistics, use_gan_ddp
from lightning_faces.errors import FacesError
from lightning_faces.losses import (
    LabelSmoothing,
    discriminator_accuracy,
    discriminator_loss,
    discriminator_targets,
    feature_matching_loss,
    generator_loss,
)
from lightning_faces.nets import Discriminator, Generator, Norm


def dcgan_adam(params: Any) -> torch.optim.Optimizer:
    """Adam as in the DCGAN paper: lr 2e-4, beta1 0.5 (0.9 made training oscillate)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def check_optimizer(name: str, make: Any) -> None:
    """Builds the optimizer once on a stand-in parameter, so a bad setting (a negative learning
    rate, betas outside [0, 1)) stops the run now, before a run folder is made, in one line."""
    try:
        make([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise FacesError(f"model.{name}: {error} (fix its init_args in the config)") from error


def _no_op() -> None:
    pass


class GAN(L.LightningModule):
    """A DCGAN trained with manual optimization: each batch updates D, then G.

    ``trainer.global_step`` counts training iterations (batches), whatever the number of
    optimizer steps in each, so ``max_steps``, ``val_check_interval`` and checkpoint intervals
    all count iterations. Under DDP an iteration is one batch on every rank: a global batch of
    ``batch_size x world_size`` images.

    Training latents are drawn per iteration from ``(seed, iteration)``, for the global batch,
    and each rank takes its own slice: ranks never share latents, a resumed run draws what the
    uninterrupted run would have, and W ranks with batch B draw what one process with batch
    W*B draws.

    Args:
        latent_dim: size of z.
        image_size: side of the generated images (linked from the data config by the CLI).
        g_width: channels of G's last hidden layer (DCGAN: 64); earlier layers double it.
        d_width: channels of D's first layer (DCGAN: 64); later layers double it.
        g_norm: normalization in G: ``batch``, ``virtual`` (reference-batch) or ``none``.
        d_norm: normalization in D, likewise.
        vbn_reference_size: examples in the virtual-batch-norm reference batches.
        g_optimizer: optimizer for G; ``None`` is Adam(lr=2e-4, betas=(0.5, 0.999)).
        d_optimizer: optimizer for D; ``None`` likewise.
        label_smoothing: D's targets: ``none`` (1/0), ``one_sided`` (real 0.9) or ``random``
            (real ~ U(0.8, 1.0), fake ~ U(0.0, 0.1)).
        smooth_fake_labels: with ``random``, also soften the fake targets (else they stay 0).
        adversarial_weight: weight of G's non-saturating loss (0 with feature matching alone).
        feature_matching_weight: weight of feature matching in G's loss (0 turns it off).
        feature_layer: which D block feature matching compares (-1: the last).
        historical_averaging_weight: weight of each player's distance from the running mean of
            its own parameters (0 turns it off).
        d_steps_per_g_step: update G only every k-th batch (D every batch).
        g_steps_per_d_step: update G k times per batch, each on fresh latents.
        d_skip_accuracy: skip D's update on batches where its accuracy is above this.
        gradient_clip_norm: clip each player's gradient norm to this (``None``: no clipping).
        ema_decay: keep an exponential moving average of G's weights with this decay (e.g.
            0.999) and use it for samples and FID; ``None`` turns it off. Its batch-norm
            statistics are estimated for its own weights before it samples (see
            ``refresh_ema_statistics``).
        ema_statistics_samples: latents the EMA generator's batch-norm statistics are estimated
            from, in batches of 64.
        num_fixed_samples: size of the fixed latent batch rendered as a grid of samples.
        channels_last: keep G, D and the image batches in channels-last memory layout (faster
            convolutions on recent GPUs, with ``trainer.precision: bf16-mixed``).
        compile: compile G and D with ``torch.compile`` at the start of fit (slow first
            iterations, then faster ones on a GPU; checkpoints keep the same keys).
        seed: seeds the training latents, the fixed latents and the virtual-batch-norm references.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        image_size: int = 64,
        g_width: int = 64,
        d_width: int = 64,
        g_norm: Norm = "batch",
        d_norm: Norm = "batch",
        vbn_reference_size: int = 64,
        g_optimizer: OptimizerCallable | None = None,
        d_optimizer: OptimizerCallable | None = None,
        label_smoothing: LabelSmoothing = "none",
        smooth_fake_labels: bool = True,
        adversarial_weight: float = 1.0,
        feature_matching_weight: float = 0.0,
        feature_layer: int = -1,
        historical_averaging_weight: float = 0.0,
        d_steps_per_g_step: int = 1,
        g_steps_per_d_step: int = 1,
        d_skip_accuracy: float | None = None,
        gradient_clip_norm: float | None = None,
        ema_decay: float | None = None,
        ema_statistics_samples: int = 256,
        num_fixed_samples: int = 64,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # optimizers are callables, not hyperparameters a checkpoint can hold as plain data
        self.save_hyperparameters(ignore=["g_optimizer", "d_optimizer"])
        if d_steps_per_g_step < 1 or g_steps_per_d_step < 1:
            raise FacesError("d_steps_per_g_step and g_steps_per_d_step must be at least 1")
        if d_steps_per_g_step > 1 and g_steps_per_d_step > 1:
            raise FacesError("set d_steps_per_g_step or g_steps_per_d_step above 1, not both")
        if adversarial_weight == 0 and feature_matching_weight == 0:
            raise FacesError("G has no loss: adversarial_weight and feature_matching_weight are both 0")
        self.automatic_optimization = False
        self.g_optimizer = g_optimizer or dcgan_adam
        self.d_optimizer = d_optimizer or dcgan_adam
        for name, optimizer in (("g_optimizer", self.g_optimizer), ("d_optimizer", self.d_optimizer)):
            check_optimizer(name, optimizer)
        self.generator = Generator(latent_dim, g_width, image_size, norm=g_norm)
        self.discriminator = Discriminator(d_width, image_size, norm=d_norm, feature_layer=feature_layer)
        seeded = torch.Generator().manual_seed(seed)
        self.register_buffer("fixed_latents", torch.randn(num_fixed_samples, latent_dim, generator=seeded))
        if self.generator.uses_virtual_batch_norm:
            self.generator.set_reference(torch.randn(vbn_reference_size, latent_dim, generator=seeded))
        if ema_statistics_samples < 1:
            raise FacesError(f"ema_statistics_samples must be at least 1, got {ema_statistics_samples}")
        if ema_decay is not None:
            if not 0 < ema_decay < 1:
                raise FacesError(f"ema_decay must be between 0 and 1 (e.g. 0.999), got {ema_decay}")
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        if historical_averaging_weight > 0:
            self.g_average = ParameterAverage(self.generator)
            self.d_average = ParameterAverage(self.discriminator)
        self.iteration = 0  # batches trained on; saved in checkpoints
        self._replicas: dict[str, nn.Module] = {}  # DDP wrappers of G and D (GANDDPStrategy)
        self._latent_rng: torch.Generator | None = None
        self._compiled = False
        self._ema_statistics_at: int | None = None  # the iteration the EMA's statistics belong to
        self.progress: dict[str, float] = {}  # shown by callbacks.ProgressBar

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        # plain DDP only (which use_gan_ddp turns into ours): DeepSpeed subclasses DDPStrategy
        # but shards and wraps the model its own way
        plain_ddp = type(strategy) is DDPStrategy or isinstance(strategy, GANDDPStrategy)
        if isinstance(strategy, ParallelStrategy) and not plain_ddp:
            raise FacesError(
                f"strategy {type(strategy).__name__} is not supported: use ddp (trainer.strategy: ddp or auto)"
            )
        use_gan_ddp(strategy)  # runs before Lightning wraps the model: G and D get a DDP each
        nets = [self.generator, self.discriminator] + ([self.generator_ema] if self.hparams.ema_decay else [])
        if self.hparams.channels_last:
            for net in nets:
                net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit" and not self._compiled:
            for net in nets[:2]:
                net.compile()  # in place: the module (and its state_dict keys) stay the same
            self._compiled = True

    def distribute(self, wrap: Any) -> None:
        """Runs training passes through ``wrap(G)`` and ``wrap(D)`` (DDP); ``None`` undoes it.

        The networks stay registered as ``generator`` and ``discriminator``, so checkpoints
        have the same keys with and without DDP.
        """
        self._replicas = {} if wrap is None else {"g": wrap(self.generator), "d": wrap(self.discriminator)}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.d_optimizer(self.discriminator.parameters()), self.g_optimizer(self.generator.parameters())]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, _attributes = batch  # (B, 3, S, S) in [-1, 1]
        hp = self.hparams
        if hp.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        d_opt, g_opt = self.optimizers()
        self._count_iterations_not_optimizer_steps(d_opt, g_opt)
        batch_size = real.shape[0]
        logs: dict[str, torch.Tensor] = {}

        # 1. D: learn to tell real from G's current fakes. Both passes go through D's DDP
        # wrapper before one backward; G runs unwrapped (no gradients to share).
        discriminator = self._replicas.get("d", self.discriminator)
        with torch.no_grad():
            fake = self.generator(self.training_latents(batch_size, slot=0))
        real_logits, _ = discriminator(real)
        fake_logits, _ = discriminator(fake)
        real_targets, fake_targets = discriminator_targets(
            batch_size, hp.label_smoothing, hp.smooth_fake_labels, self.device
        )
        d_loss = discriminator_loss(real_logits, fake_logits, real_targets, fake_targets)
        if hp.historical_averaging_weight > 0:
            d_loss = d_loss + hp.historical_averaging_weight * self.d_average.penalty(self.discriminator)
        accuracy = discriminator_accuracy(real_logits.detach(), fake_logits.detach())
        # skipping needs the accuracy on the host: the one sync in the step, only when asked
        # for. Ranks decide together on their mean accuracy: a rank that skipped D's backward
        # while another ran it would leave DDP waiting for gradients that never come.
        skip_d = False
        if hp.d_skip_accuracy is not None:
            skip_d = self.trainer.strategy.reduce(accuracy, reduce_op="mean").item() > hp.d_skip_accuracy
        if not skip_d:
            d_opt.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(d_opt)
            d_opt.step()
            if hp.historical_averaging_weight > 0:
                self.d_average.update(self.discriminator)
        logs.update(
            {
                "train/d_loss": d_loss.detach(),
                "train/d_real": torch.sigmoid(real_logits.detach()).mean(),  # mean D(x)
                "train/d_fake": torch.sigmoid(fake_logits.detach()).mean(),  # mean D(G(z))
                "train/d_accuracy": accuracy,
                "train/d_skipped": torch.tensor(float(skip_d)),
            }
        )

        # 2. G: fool the (just updated) D, every k-th batch or k times per batch
        g_updated = (self.iteration + 1) % hp.d_steps_per_g_step == 0
        if g_updated:
            for step in range(hp.g_steps_per_d_step):
                logs["train/g_loss"] = self._generator_step(g_opt, real, slot=1 + step)

        # every rank's batch-norm running statistics -> their mean
        if self.trainer.world_size > 1:
            average_over_ranks(batch_norm_statistics([self.generator, self.discriminator]))
        self.log_dict(logs)  # tensors: the loggers read them on the host at logging intervals only
        if self.iteration % self.trainer.log_every_n_steps == 0:
            # the progress bar shows host numbers refreshed at the same intervals (one transfer);
            # prog_bar=True would have the bar read every value at every refresh, waiting each time
            # for the device to finish the step
            values = torch.stack([logs["train/d_loss"], logs["train/d_real"], logs["train/d_fake"]]).tolist()
            self.progress = dict(zip(("d_loss", "D(x)", "D(G(z))"), values, strict=True))
        self.iteration += 1

    def _generator_step(self, g_opt: Any, real: torch.Tensor, slot: int) -> torch.Tensor:
        hp = self.hparams
        with self.toggled_optimizer(g_opt):  # D's parameters need no gradients here
            # through G's DDP wrapper (its gradients are averaged); D unwrapped and frozen
            fake = self._replicas.get("g", self.generator)(self.training_latents(real.shape[0], slot))
            fake_logits, fake_features = self.discriminator(fake)
            g_loss = hp.adversarial_weight * generator_loss(fake_logits)
            if hp.feature_matching_weight > 0:
                with torch.no_grad():
                    _, real_features = self.discriminator(real)
                g_loss = g_loss + hp.feature_matching_weight * feature_matching_loss(real_features, fake_features)
            if hp.historical_averaging_weight > 0:
                g_loss = g_loss + hp.historical_averaging_weight * self.g_average.penalty(self.generator)
            g_opt.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            self._clip(g_opt)
            g_opt.step()
        if hp.historical_averaging_weight > 0:
            self.g_average.update(self.generator)
        if hp.ema_decay is not None:
            self._update_ema_weights()
        return g_loss.detach()

    @torch.no_grad()
    def _update_ema_weights(self) -> None:
        # ema <- decay * ema + (1 - decay) * G, after each G update
        weight = 1.0 - self.hparams.ema_decay
        torch._foreach_lerp_(list(self.generator_ema.parameters()), list(self.generator.parameters()), weight)

    @torch.no_grad()
    def refresh_ema_statistics(self) -> None:
        """Estimates the EMA generator's batch-norm running statistics for its own weights.

        G's running statistics belong to G's current weights, not to the EMA's average of past
        weights, and sampling the EMA with them washes colours out and blurs. As BigGAN's
        "standing statistics": run the EMA in training mode over fixed latents and keep the
        plain mean of each layer's batch statistics (momentum None). Once per iteration at
        most; the same latents on every rank, so every rank gets the same statistics.
        """
        layers = [m for m in self.generator_ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers or self._ema_statistics_at == self.iteration:
            return
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches below
        seeded = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 2)
        was_training = self.generator_ema.training
        self.generator_ema.train()
        try:
            remaining = self.hparams.ema_statistics_samples
            while remaining > 0:
                count = min(64, remaining)
                self.generator_ema(self.sample_latents(count, seeded))
                remaining -= count
        finally:
            self.generator_ema.train(was_training)
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
        self._ema_statistics_at = self.iteration

    def _clip(self, optimizer: Any) -> None:
        if self.hparams.gradient_clip_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip_norm, gradient_clip_algorithm="norm"
            )

    def _count_iterations_not_optimizer_steps(self, *optimizers: Any) -> None:
        # Lightning counts every optimizer.step() in global_step; a GAN batch takes two or more
        # (and a varying number with step ratios or skipping). Count each batch once instead.
        for optimizer in optimizers:
            optimizer._on_before_step = optimizer._on_after_step = _no_op
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def sample_latents(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws z ~ N(0, I): (count, latent_dim) on the module's device."""
        return torch.randn(count, self.hparams.latent_dim, device=self.device, generator=generator)

    def training_latents(self, count: int, slot: int) -> torch.Tensor:
        """This rank's ``count`` latents of the global batch for this iteration and use (slot).

        The global batch (``count x world_size``) is drawn from ``(seed, iteration, slot)``
        and rank r takes rows ``r*count`` to ``(r+1)*count``.
        """
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self._latent_rng is None or self._latent_rng.device != self.device:
            self._latent_rng = torch.Generator(device=self.device)
        key = np.random.SeedSequence([self.hparams.seed, self.iteration, slot]).generate_state(1, np.uint64)[0]
        self._latent_rng.manual_seed(int(key))
        latents = torch.randn(world * count, self.hparams.latent_dim, device=self.device, generator=self._latent_rng)
        return latents[rank * count : (rank + 1) * count]

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, ema: bool = True) -> torch.Tensor:
        """Renders latents (B, latent_dim) into images (B, 3, S, S) in [-1, 1].

        Uses G's EMA when there is one (unless ``ema`` is False), in eval mode (batch-norm
        running statistics; the EMA's are estimated for its own weights first).
        """
        generator = self.generator
        if ema and self.hparams.ema_decay is not None:
            self.refresh_ema_statistics()
            generator = self.generator_ema
        was_training = generator.training
        generator.eval()
        try:
            return generator(latents.to(self.device))
        finally:
            generator.train(was_training)

    # validation and test: D's view of held-out real images against fresh fakes
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, prefix: str) -> None:
        real, _ = batch
        # the same latents for batch i at every evaluation, so numbers compare across epochs
        # (and different latents on each rank, whose batch i holds different images)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        seeded = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 1 + batch_idx * world + rank)
        fake = self.generator(self.sample_latents(real.shape[0], seeded))
        real_logits, _ = self.discriminator(real)
        fake_logits, _ = self.discriminator(fake)
        ones, zeros = torch.ones_like(real_logits), torch.zeros_like(fake_logits)
        metrics = {
            f"{prefix}/d_loss": discriminator_loss(real_logits, fake_logits, ones, zeros),
            f"{prefix}/g_loss": generator_loss(fake_logits),
            f"{prefix}/d_real": torch.sigmoid(real_logits).mean(),
            f"{prefix}/d_fake": torch.sigmoid(fake_logits).mean(),
            f"{prefix}/d_accuracy": discriminator_accuracy(real_logits, fake_logits),
        }
        self.log_dict(metrics, on_epoch=True, batch_size=real.shape[0], sync_dist=True)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        """Turns sample indices into images; index i always gives the same face for a checkpoint."""
        latents = torch.stack(
            [torch.randn(self.hparams.latent_dim, generator=torch.Generator().manual_seed(int(i))) for i in batch]
        )
        images = self.generate(latents)
        return {"indices": batch.cpu(), "images": to_uint8(images).cpu()}

    def on_fit_start(self) -> None:
        if self.device.type == "cpu" and any(isinstance(m, nn.SyncBatchNorm) for m in self.modules()):
            raise FacesError(
                "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU): "
                "on CPU set it to false, or use model.g_norm/d_norm virtual or none"
            )
        if self.discriminator.uses_virtual_batch_norm and self.discriminator.reference is None:
            self.discriminator.set_reference(self._reference_images())

    def _reference_images(self) -> torch.Tensor:
        """A fixed batch of real training images for D's virtual batch norm, in [-1, 1]."""
        dataset = getattr(self.trainer.datamodule, "train_set", None)
        if dataset is None:
            raise FacesError(
                "virtual batch norm in D needs a datamodule that has a train_set (the lightning_faces ones do)"
            )
        count = min(self.hparams.vbn_reference_size, len(dataset))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.hparams.seed))[:count]
        images = torch.stack([dataset[int(i)][0] for i in order])
        return to_float(images.to(self.device))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["iteration"] = self.iteration
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version  # a resumed run continues this W&B run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        # reference batches are buffers that start empty: give them the saved shapes first
        state = checkpoint["state_dict"]
        nets = [("generator", self.generator), ("discriminator", self.discriminator)]
        if self.hparams.ema_decay is not None:
            nets.append(("generator_ema", self.generator_ema))
        for name, net in nets:
            if f"{name}.reference" in state:
                net.set_reference(state[f"{name}.reference"])
