"""The GAN: one training iteration, read top to bottom in ``GAN.training_step``.

Everything else the iteration uses is a part with its own module: the networks (``nets``), the
objective and the regularizers, G's average (``ema``), the growth schedule (``growth``), what
a seed or an iteration draws (``sampling``), DDP's wrappers (``distributed``), and how a
checkpoint's settings are described and rebuilt (``checkpoint``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_faces import capture, schedules
from lightning_faces.augment import DiffAugment
from lightning_faces.checkpoint import built_settings, describe_settings, load_checkpoint
from lightning_faces.data.images import to_uint8
from lightning_faces.distributed import (
    average_over_ranks,
    batch_norm_statistics,
    check_strategy,
    check_sync_batchnorm,
)
from lightning_faces.ema import EMA
from lightning_faces.errors import FacesError
from lightning_faces.growth import Grower, Growth, enlarge
from lightning_faces.nets.contract import Scores
from lightning_faces.nets.virtual_batch_norm import reference_from_data, uses_virtual_batch_norm
from lightning_faces.objectives import AttributeLoss, NonSaturating, Objective
from lightning_faces.regularizers import FeatureMatching, Regularizer, Step, penalties
from lightning_faces.sampling import Genes
from lightning_faces.schedules import Cosine


def dcgan_adam(params: Any) -> torch.optim.Optimizer:
    """Adam as in the DCGAN paper: lr 2e-4, beta1 0.5 (0.9 made training oscillate)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class GAN(L.LightningModule):
    """A GAN of any generator, discriminator and objective, trained with manual optimization.

    Each batch is one iteration (``training_step``): D's update, then (every
    ``d_steps_per_g_step``-th batch) G's, then G's average. ``trainer.global_step`` counts
    iterations (D's optimizer step, the one Lightning counts, runs once in each), so
    ``max_steps``, ``val_check_interval`` and checkpoint intervals count iterations. Under DDP
    an iteration is one batch on every rank. Latents are drawn from ``(seed, iteration)`` for
    the global batch, each rank taking its slice (``sampling.Genes``): a resumed run draws what
    the uninterrupted one would have, and W ranks with batch B draw what one process with W*B does.

    Args:
        generator: G, e.g. ``nets.DCGANGenerator`` or ``nets.ResNetGenerator``.
        discriminator: D, e.g. ``nets.DCGANDiscriminator`` or ``nets.ResNetDiscriminator``.
        objective: D's and G's losses; ``None`` is ``NonSaturating()`` (DCGAN's).
        d_regularizers: penalties added to D's loss (``R1``, ``GradientPenalty``, ``HistoricalAveraging``).
        g_regularizers: penalties added to G's loss (``FeatureMatching``, ``HistoricalAveraging``).
        augment: applied to real and fake images before D in training (``DiffAugment``).
        attribute_loss: the auxiliary classifier's loss, for a D with ``conditioning: auxiliary``
            (``None``: ``AttributeLoss()``, weight 1).
        g_optimizer, d_optimizer: G's and D's optimizers; ``None`` is Adam(lr=2e-4, betas=(0.5, 0.999)).
        lr_decay: ``linear`` lowers both learning rates linearly to 0 at ``trainer.max_steps``
            (SNGAN's schedule); ``none`` keeps them.
        lr, beta2: both players' learning rate and Adam beta2, fixed or a ``schedules.Cosine``
            over images seen (R3GAN's), overriding the optimizers' own; ``None``: the optimizers'.
        adversarial_weight: weight of G's adversarial loss (0 with feature matching alone).
        d_steps_per_g_step: update G only every k-th batch, D every batch (SNGAN's n_dis).
        g_steps_per_d_step: update G k times per batch, each time after the first on fresh latents.
        d_skip_accuracy: skip D's update on batches where its accuracy is above this.
        gradient_clip_norm: clip each player's gradient norm to this (``None``: no clipping).
        ema_decay: keep an average of G's weights with this decay (e.g. 0.999) for samples and
            FID (``ema.EMA``); ``None``: none, unless ``ema_half_life``.
        ema_half_life: the average's half-life in images instead, fixed or a ``schedules.Cosine``.
        ema_ramp: cap the average's half-life at this fraction of the images seen (StyleGAN2-ADA:
            0.05), so it does not keep G's untrained start; ``None``: no cap.
        ema_statistics_samples: latents the average's batch-norm statistics are estimated from.
        vbn_reference_size: examples in the reference batches of networks with virtual batch norm.
        num_fixed_samples: size of the fixed latent batch rendered as a grid of samples.
        fresh_latents: G's update draws latents of its own (two G passes per iteration);
            ``False`` updates G on the fakes D was just trained on, as the classic DCGAN loop does.
        channels_last: channels-last memory layout for G, D and the batches. ``None``: on CPUs,
            where it was measured faster (docs/benchmarks.md), off on GPUs.
        compile: compile G and D with ``torch.compile`` at the start of fit (the same checkpoint keys).
        cuda_graph: run each iteration as one CUDA graph, captured once and replayed
            (``capture.CapturedIteration``: the plain iteration only, without regularizers,
            augmentation or schedules); on a CPU the same step runs eagerly.
        growth: grow G and D from a low resolution to the data's, ProGAN's way (``growth.Growth``;
            networks from ``nets.progressive``). ``None``: train at the data's resolution throughout.
        seed: seeds the training latents, the fixed latents and the virtual-batch-norm references.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        objective: Objective | None = None,
        d_regularizers: list[Regularizer] | None = None,
        g_regularizers: list[Regularizer] | None = None,
        augment: DiffAugment | None = None,
        attribute_loss: AttributeLoss | None = None,
        g_optimizer: OptimizerCallable | None = None,
        d_optimizer: OptimizerCallable | None = None,
        lr_decay: Literal["none", "linear"] = "none",
        lr: float | Cosine | None = None,
        beta2: float | Cosine | None = None,
        adversarial_weight: float = 1.0,
        d_steps_per_g_step: int = 1,
        g_steps_per_d_step: int = 1,
        d_skip_accuracy: float | None = None,
        gradient_clip_norm: float | None = None,
        ema_decay: float | None = None,
        ema_statistics_samples: int = 256,
        ema_half_life: float | Cosine | None = None,
        ema_ramp: float | None = None,
        vbn_reference_size: int = 64,
        num_fixed_samples: int = 64,
        fresh_latents: bool = False,
        channels_last: bool | None = None,
        compile: bool = False,
        cuda_graph: bool = False,
        growth: Growth | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # Lightning's advice to ignore modules: they are described instead
            warnings.filterwarnings("ignore", message="Attribute '.*' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["g_optimizer", "d_optimizer"])  # callables, not data
        describe_settings(self.hparams, generator, discriminator)
        check_settings(
            generator, discriminator, g_regularizers, attribute_loss, g_optimizer, d_optimizer, growth, self.hparams
        )
        self.automatic_optimization = False
        self.g_optimizer, self.d_optimizer = g_optimizer or dcgan_adam, d_optimizer or dcgan_adam
        self.generator, self.discriminator = generator, discriminator
        self.objective = objective if objective is not None else NonSaturating()
        self.augment = augment if augment is not None else nn.Identity()
        self.d_regularizers = nn.ModuleList(d_regularizers or [])
        self.g_regularizers = nn.ModuleList(g_regularizers or [])
        for player, regularizers in ((discriminator, self.d_regularizers), (generator, self.g_regularizers)):
            for regularizer in regularizers:
                regularizer.bind(player)
        self.attribute_names: tuple[str, ...] = tuple(getattr(generator, "attributes", ()))
        head = getattr(discriminator, "attribute_head", None)
        classifies = bool(head is not None and head.classifies)  # AC-GAN: D predicts attributes
        self.attribute_loss = attribute_loss if attribute_loss is not None or not classifies else AttributeLoss()
        seeded = torch.Generator().manual_seed(seed)
        fixed_latents = torch.randn(num_fixed_samples, int(generator.latent_dim), generator=seeded)
        self.genes = Genes(fixed_latents, self.attribute_names, seed)
        if uses_virtual_batch_norm(generator):
            generator.set_reference(torch.randn(vbn_reference_size, self.latent_dim, generator=seeded))
        self.ema = None
        if ema_decay is not None or ema_half_life is not None:
            self.ema = EMA(generator, decay=ema_decay, statistics_samples=ema_statistics_samples,
                           half_life=ema_half_life, ramp=ema_ramp)  # fmt: skip
        if lr is not None:
            schedules.check("model.lr", lr)
        if beta2 is not None:
            schedules.check("model.beta2", beta2, below=1.0)
        self.optimizer_schedules = {name: s for name, s in (("lr", lr), ("beta2", beta2)) if s is not None}
        if self.ema is not None:
            self.generator_ema = self.ema.network  # registered here: its keys in checkpoints
        self.growth = growth
        self.grower = Grower(growth, self._networks(), self.image_size) if growth is not None else None
        self.iteration = 0  # batches trained on; saved in checkpoints
        self.images_seen: int | None = 0  # real images trained on, over all ranks; saved in checkpoints
        self.progress: dict[str, float] = {}  # host numbers for the progress bar (callbacks.ProgressBar)
        self._replicas: dict[str, nn.Module] = {}  # DDP wrappers of G and D (distributed.GANDDPStrategy)
        self._channels_last: bool | None = None  # channels_last, resolved for the device in setup
        self._captured: capture.CapturedIteration | None = None  # cuda_graph: the iteration, built in setup

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: Any = "cpu", checkpoint: dict[str, Any] | None = None
    ) -> GAN:
        """The GAN of a checkpoint written through the CLI, read without unpickling code: its
        networks, objective and regularizers rebuilt from the settings it records (only this
        package's classes; a bad file, or one from lightning_faces 0.1, is one line).
        ``checkpoint``: the file's contents, when already read with ``load_checkpoint``."""
        if checkpoint is None:
            checkpoint = load_checkpoint(path, map_location=map_location)
        model = cls(**built_settings(checkpoint, path))
        model.restore(checkpoint)
        return model

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Loads a checkpoint's weights and state into this GAN (built with the same settings)."""
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"])

    @property
    def latent_dim(self) -> int:
        return int(self.generator.latent_dim)

    @property
    def image_size(self) -> int:
        return int(self.generator.image_size)

    @property
    def images_shown(self) -> int:
        """Real images trained on over all ranks (what the growth schedule follows)."""
        return self.grower.images_shown if self.grower is not None else 0

    def _networks(self) -> list[nn.Module]:
        return [self.generator, self.discriminator] + ([self.generator_ema] if self.ema else [])

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy)
        if self.hparams.d_skip_accuracy is not None and self.trainer.precision == "16-mixed":
            raise FacesError(
                "model.d_skip_accuracy cannot run with trainer.precision 16-mixed (its gradient scaler needs "
                "gradients at every D step): use bf16-mixed or 32-true, or remove d_skip_accuracy"
            )
        self._channels_last = self.hparams.channels_last
        if self._channels_last is None:  # measured faster on CPUs only (docs/benchmarks.md)
            self._channels_last = self.trainer.strategy.root_device.type == "cpu"
        for net in self._networks() if self._channels_last else ():
            net.to(memory_format=torch.channels_last)
        if self.hparams.cuda_graph and stage == "fit":
            capture.check(self)  # before compiling: compile and capture do not mix
            self._captured = capture.CapturedIteration(self)
        for net in self._networks()[:2] if self.hparams.compile and stage == "fit" else ():
            net.compile()  # in place: the module (and its state_dict keys) stay the same; twice is harmless

    def distribute(self, wrap: Any) -> None:
        """Runs training passes through ``wrap(G)`` and ``wrap(D)`` (DDP); ``None`` undoes it.
        The networks stay registered as they are: checkpoints have the same keys either way."""
        self._replicas = {} if wrap is None else {"g": wrap(self.generator), "d": wrap(self.discriminator)}

    def configure_optimizers(self) -> Any:
        optimizers = [self.d_optimizer(self.discriminator.parameters()), self.g_optimizer(self.generator.parameters())]
        if "beta2" in self.optimizer_schedules and not all("betas" in o.param_groups[0] for o in optimizers):
            raise FacesError(
                "model.beta2 sets Adam's beta2, but an optimizer has no betas: use Adam or AdamW, or drop beta2"
            )
        if self.hparams.cuda_graph and self.device.type == "cuda":
            capture.make_capturable(optimizers)
        if self.hparams.lr_decay == "none":
            return optimizers
        iterations = self.trainer.max_steps
        if iterations is None or iterations < 1:
            raise FacesError("model.lr_decay linear decays to 0 at trainer.max_steps: set trainer.max_steps")
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda t: max(0.0, 1.0 - t / iterations)) for o in optimizers
        ]
        return optimizers, [{"scheduler": s, "interval": "step"} for s in schedulers]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if self._captured is not None:
            return self._captured_training_step(batch)
        hp, genes, t = self.hparams, self.genes, self.iteration
        real, real_attributes = batch  # (B, 3, S, S) in [-1, 1]; (B, A) in {0, 1}, A = 0 unconditional
        d_opt, g_opt = self.optimizers()
        logs: dict[str, torch.Tensor] = {}
        if self.grower is not None:  # this iteration's resolution: (B', 3, R, R), B' <= B
            optimizers = [d_opt.optimizer, g_opt.optimizer]
            real, real_attributes, growth = self.grower.step(real, real_attributes, optimizers, self.trainer.world_size)
            self.log_dict(growth)
        if self._channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        batch_images = real.shape[0] * self.trainer.world_size  # this iteration's: every rank's batch is B
        seen = int(self.images_seen)  # type: ignore[arg-type]  # on_fit_start knows it
        logs.update(self._follow_schedules([d_opt.optimizer, g_opt.optimizer], seen))
        real_labels = genes.labels(real_attributes, self.dtype)
        # a player's own passes go through its DDP wrapper (the plain network in one process),
        # so that its backward averages its gradients over ranks
        g_ddp, d_ddp = self._replicas.get("g", self.generator), self._replicas.get("d", self.discriminator)
        update_g = (t + 1) % hp.d_steps_per_g_step == 0

        # 0. Latents, and the attributes asked of G, drawn from (seed, iteration, slot). G's
        # update reuses these fakes (one G pass per iteration, the classic DCGAN loop) unless
        # fresh_latents or no G update this iteration: then they are made without gradients.
        fake_labels = genes.shuffled(real_labels, t, slot=0)
        latents = genes.for_iteration(real.shape[0], t, slot=0)
        reuse_fakes = update_g and not hp.fresh_latents
        with torch.set_grad_enabled(reuse_fakes):
            fake = (g_ddp if reuse_fakes else self.generator)(latents, fake_labels)

        # 1. D learns to tell real from G's current fakes (detached: D's update leaves G alone)
        def d_scores(images: torch.Tensor, labels: torch.Tensor | None = real_labels) -> Scores:
            return d_ddp(self.augment(images), labels)

        real_scores, fake_scores = d_scores(real), d_scores(fake.detach(), fake_labels)
        d_loss = self.objective.discriminator_loss(real_scores.logits, fake_scores.logits)
        if self.attribute_loss is not None:  # AC-GAN: D's head learns the real images' attributes
            attribute_loss = self.attribute_loss.discriminator_loss(real_scores.attribute_logits, real_labels)
            logs["train/d_attribute_loss"] = attribute_loss.detach()
            d_loss = d_loss + attribute_loss
        readings = self.objective.readings(real_scores.logits.detach(), fake_scores.logits.detach())
        skip_d = self._skip_discriminator(readings["d_accuracy"])
        d_opt.zero_grad(set_to_none=True)
        if not skip_d:
            step = Step(net=self.discriminator, real=real, fake=fake.detach(), fake_features=fake_scores.features,
                        score=d_scores, d_steps=t, images_seen=seen, fake_labels=fake_labels)  # fmt: skip
            self.manual_backward(d_loss + penalties(self.d_regularizers, step, "d", logs))
            self._prepare_gradients(self.discriminator, d_opt)
        d_opt.step()  # Lightning counts this step: global_step counts iterations (skipped: no gradients)
        for regularizer in self.d_regularizers if not skip_d else ():
            regularizer.after_step(self.discriminator)

        # 2. G learns to fool the D just updated, every k-th batch (or k times a batch, each
        # time after the first on fresh latents); D is frozen and scores G's fakes without DDP
        def g_scores(images: torch.Tensor, labels: torch.Tensor | None = real_labels) -> Scores:
            return self.discriminator(self.augment(images), labels)

        for g_step in range(hp.g_steps_per_d_step) if update_g else ():
            with self.toggled_optimizer(g_opt):
                if g_step > 0 or not reuse_fakes:
                    fake_labels = genes.shuffled(real_labels, t, slot=1 + g_step)
                    fake = g_ddp(genes.for_iteration(real.shape[0], t, slot=1 + g_step), fake_labels)
                g_fake_scores = g_scores(fake, fake_labels)
                real_logits = real_scores.logits.detach()
                if getattr(self.objective, "relativistic", False):  # fakes against reals as the updated D sees them
                    with torch.no_grad():
                        real_logits = g_scores(real).logits
                g_loss = hp.adversarial_weight * self.objective.generator_loss(real_logits, g_fake_scores.logits)
                if self.attribute_loss is not None:  # AC-GAN: fakes should show the attributes asked for
                    attribute_loss = self.attribute_loss.generator_loss(g_fake_scores.attribute_logits, fake_labels)
                    logs["train/g_attribute_loss"] = attribute_loss.detach()
                    g_loss = g_loss + attribute_loss
                step = Step(net=self.generator, real=real, fake=fake, fake_features=g_fake_scores.features,
                            score=g_scores, d_steps=t, images_seen=seen, fake_labels=fake_labels)  # fmt: skip
                g_loss = g_loss + penalties(self.g_regularizers, step, "g", logs)
                g_opt.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                self._prepare_gradients(self.generator, g_opt)
                self._uncounted_step(g_opt)
            for regularizer in self.g_regularizers:
                regularizer.after_step(self.generator)
            if self.ema is not None:  # 3. G's average follows G, by the images G learned from since its last update
                beta = self.ema.beta(batch_images * hp.d_steps_per_g_step / hp.g_steps_per_d_step, seen)
                self.ema.update(self.generator, beta)
                if not self.ema.fixed:
                    logs["train/ema_beta"] = torch.tensor(beta)
            logs["train/g_loss"] = g_loss.detach()

        # 4. Every rank's batch-norm statistics to their mean, learning rates, logs
        if self.trainer.world_size > 1:
            average_over_ranks(batch_norm_statistics([self.generator, self.discriminator]))
        for scheduler in self._schedulers():
            scheduler.step()
        logs.update({f"train/{name}": value for name, value in readings.items()})  # mean D(x), D(G(z)), accuracy
        logs["train/d_loss"], logs["train/d_skipped"] = d_loss.detach(), torch.tensor(float(skip_d))
        self.log_dict(logs)  # tensors: the loggers read them on the host at logging intervals only
        self._show_progress(logs)
        self.iteration += 1
        self.images_seen = seen + batch_images

    def _captured_training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """``training_step`` through ``capture.CapturedIteration`` (``cuda_graph``): the same
        iteration, its inputs drawn here as there, both optimizer steps inside it. D's Lightning
        optimizer runs it as the step's closure, so Lightning counts the iteration; the step after
        the closure finds no gradients (the iteration leaves none) and changes nothing."""
        real, real_attributes = batch
        if self._channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        t, seen, batch_images = self.iteration, int(self.images_seen), real.shape[0]  # type: ignore[arg-type]
        real_labels = self.genes.labels(real_attributes, self.dtype)
        inputs = {
            "real": real,
            "latents": self.genes.for_iteration(real.shape[0], t, slot=0),
            "real_labels": real_labels,
            "fake_labels": self.genes.shuffled(real_labels, t, slot=0),
            "ema_weight": 1.0 - self.ema.beta(batch_images, seen) if self.ema is not None else None,
        }
        logs: dict[str, torch.Tensor] = {}
        d_opt, _ = self.optimizers()
        d_opt.step(closure=lambda: logs.update(self._captured(**inputs)))
        if self.ema is not None and not self.ema.fixed:
            logs["train/ema_beta"] = torch.tensor(1.0 - inputs["ema_weight"])
        logs["train/d_skipped"] = torch.tensor(0.0)
        self.log_dict(logs)
        self._show_progress(logs)
        self.iteration += 1
        self.images_seen = seen + batch_images

    def _uncounted_step(self, optimizer: Any) -> None:
        """An optimizer step through the strategy, as Lightning's own (precision plugins apply), but
        not counted in ``trainer.global_step``: Lightning counts every LightningOptimizer step
        (its issue 17958), and D's step, once an iteration, already counts it."""
        self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=_no_closure)

    def _skip_discriminator(self, accuracy: torch.Tensor) -> bool:
        """Whether D sits this iteration out (``d_skip_accuracy``): decided by all ranks together
        on their mean accuracy (a rank skipping D's backward alone would leave DDP waiting). The
        one host sync in the step, only when asked for."""
        if self.hparams.d_skip_accuracy is None:
            return False
        return self.trainer.strategy.reduce(accuracy, reduce_op="mean").item() > self.hparams.d_skip_accuracy

    def _prepare_gradients(self, net: nn.Module, optimizer: Any) -> None:
        """Before a player's optimizer step: growth's frozen layers dropped, the norm clipped."""
        if self.grower is not None:
            self.grower.hold_old_layers(net)
        if self.hparams.gradient_clip_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip_norm, gradient_clip_algorithm="norm"
            )

    def _follow_schedules(self, optimizers: list[torch.optim.Optimizer], seen: int) -> dict[str, torch.Tensor]:
        """Sets this iteration's scheduled settings (learning rate, Adam beta2, augmentation
        probability) after ``seen`` images; returns them as logs."""
        now = {name: schedules.value(setting, seen) for name, setting in self.optimizer_schedules.items()}
        for group in (group for optimizer in optimizers for group in optimizer.param_groups):
            if "lr" in now:
                group["lr"] = now["lr"]
            if "beta2" in now:
                group["betas"] = (group["betas"][0], now["beta2"])
        if isinstance(self.augment, DiffAugment):
            now.update(self.augment.follow(seen))
        return {f"train/{name}": torch.tensor(value) for name, value in now.items()}

    def _schedulers(self) -> list[Any]:
        if self.hparams.lr_decay == "none":
            return []
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def _show_progress(self, logs: dict[str, torch.Tensor]) -> None:
        """Host numbers for the progress bar, refreshed at logging intervals in one transfer
        (``prog_bar=True`` would wait at every refresh for the device to finish the step)."""
        if self.iteration % self.trainer.log_every_n_steps == 0:
            values = torch.stack([logs["train/d_loss"], logs["train/d_real"], logs["train/d_fake"]]).tolist()
            self.progress = dict(zip(("d_loss", "D(x)", "D(G(z))"), values, strict=True))
            if self.grower is not None:
                self.progress.update(res=self.generator.resolution, alpha=float(self.generator.alpha))

    def sampler(self, ema: bool = True) -> nn.Module:
        """The network samples come from: G's average when there is one (unless ``ema`` is
        False), its batch-norm statistics estimated for its own weights first; else G."""
        if not ema or self.ema is None:
            return self.generator
        self.ema.refresh_statistics(self.genes.sample, self.hparams.seed + 2, self.iteration)
        return self.generator_ema

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, attributes: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """Renders latents (B, latent_dim) into images (B, 3, S, S) in [-1, 1], in eval mode.

        A conditional GAN needs ``attributes`` (B, A) in {0, 1}, in the order of
        ``attribute_names``. Uses ``sampler(ema)``: G's average when there is one.
        """
        if self.attribute_names and attributes is None:
            raise FacesError(f"this GAN is conditioned on {', '.join(self.attribute_names)}: pass their values")
        generator = self.sampler(ema)
        was_training = generator.training
        generator.eval()
        try:
            labels = attributes.to(self.device, self.dtype) if self.attribute_names else None
            return enlarge(generator(latents.to(self.device), labels), self.image_size)  # growing: at full size
        finally:
            generator.train(was_training)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Turns seeds into images as ``generate`` does (``Genes.for_seeds``): seed i gives the
        same face, with the attribute values asked for (``data.predict_attributes``)."""
        seeds, values, asked = batch if isinstance(batch, (list, tuple)) else (batch, None, None)
        wanted = {}
        if self.attribute_names:
            if values is None or values.shape[1] != len(self.attribute_names):
                raise FacesError(
                    f"the model is conditioned on {' '.join(self.attribute_names)}: set data.attributes to them"
                )
            wanted = {name: float(values[0, c]) for c, name in enumerate(self.attribute_names) if asked[0, c]}
        latents, attributes = self.genes.for_seeds(seeds.tolist(), wanted)
        return {"indices": seeds.cpu(), "images": to_uint8(self.generate(latents, attributes)).cpu()}

    # validation and test: D's view of held-out real images against fresh fakes
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, prefix: str) -> None:
        real, real_attributes = batch
        if self.grower is not None:
            real = self.grower.as_trained(real)
        real_labels = self.genes.labels(real_attributes, self.dtype)
        fake_labels = self.genes.shuffled(real_labels, self.iteration, slot=batch_idx)
        # the same latents for batch i at every evaluation, so numbers compare across epochs
        # (and different latents on each rank, whose batch i holds different images)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        seeded = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 1 + batch_idx * world + rank)
        fake = self.generator(self.genes.latents(real.shape[0], seeded), fake_labels)
        real_logits = self.discriminator(real, real_labels).logits
        fake_logits = self.discriminator(fake, fake_labels).logits
        objective = self.objective  # in eval mode here: no label smoothing
        metrics = {
            "d_loss": objective.discriminator_loss(real_logits, fake_logits),
            "g_loss": objective.generator_loss(real_logits, fake_logits),
            **objective.readings(real_logits, fake_logits),
        }
        metrics = {f"{prefix}/{name}": value for name, value in metrics.items()}
        self.log_dict(metrics, on_epoch=True, batch_size=real.shape[0], sync_dist=True)

    def on_fit_start(self) -> None:
        check_sync_batchnorm(self, self.device)
        data = self.trainer.datamodule
        if self.images_seen is None:  # resumed from a checkpoint of 0.4: iterations times the global batch
            self.images_seen = self.iteration * int(getattr(data, "batch_size", 0)) * self.trainer.world_size
        if self.iteration == 0:
            self.genes.fill_pool(data)  # a conditional GAN's attribute rows, from the training data
        reference_from_data(self.discriminator, data, self.hparams.vbn_reference_size, self.hparams.seed)
        if self.grower is not None:
            self.grower.start(getattr(data, "batch_size", None))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["iteration"] = self.iteration
        checkpoint["images_seen"] = self.images_seen
        checkpoint["images_shown"] = self.images_shown

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        # a checkpoint of 0.4 did not count them: on_fit_start estimates them (growth counted its own)
        self.images_seen = checkpoint.get("images_seen", checkpoint.get("images_shown") or None)
        if self.grower is not None:
            self.grower.images_shown = int(checkpoint.get("images_shown", 0))
        if self.ema is not None:
            self.ema.forget_statistics()
        state = checkpoint["state_dict"]
        for name in ("fixed_latents", "attribute_pool"):  # their keys in checkpoints of 0.4
            if name in state:
                state[f"genes.{name}"] = state.pop(name)
        # reference batches are buffers that start empty: give them the saved shapes first
        for name in ("generator", "discriminator", "generator_ema"):
            if f"{name}.reference" in state:
                getattr(self, name).set_reference(state[f"{name}.reference"])


def _no_closure() -> None:
    pass


def check_settings(
    generator: Any,
    discriminator: Any,
    g_regularizers: list[Regularizer] | None,
    attribute_loss: AttributeLoss | None,
    g_optimizer: Any,
    d_optimizer: Any,
    growth: Growth | None,
    hparams: Any,
) -> None:
    """Refuses, in one line each, settings that cannot train (before any run folder exists)."""
    for name, net in (("generator", generator), ("discriminator", discriminator)):
        if not isinstance(net, nn.Module):
            raise FacesError(f"model.{name} must be a network (an nn.Module), got {type(net).__name__}")
    if not hasattr(generator, "latent_dim"):
        name = type(generator).__name__
        raise FacesError(f"model.generator {name} has no latent_dim attribute (see lightning_faces.nets.contract)")
    if hparams.d_steps_per_g_step < 1 or hparams.g_steps_per_d_step < 1:
        raise FacesError("d_steps_per_g_step and g_steps_per_d_step must be at least 1")
    if hparams.d_steps_per_g_step > 1 and hparams.g_steps_per_d_step > 1:
        raise FacesError("set d_steps_per_g_step or g_steps_per_d_step above 1, not both")
    for name, optimizer in (("g_optimizer", g_optimizer), ("d_optimizer", d_optimizer)):
        check_optimizer(name, optimizer)
    conditioned, judged = tuple(getattr(generator, "attributes", ())), tuple(getattr(discriminator, "attributes", ()))
    if judged != conditioned:
        raise FacesError(
            f"the generator is conditioned on {list(conditioned)} but the discriminator on {list(judged)}: "
            "give both the same attributes (the CLI links data.attributes into both)"
        )
    head = getattr(discriminator, "attribute_head", None)
    if attribute_loss is not None and not (head is not None and head.classifies):
        raise FacesError(
            "model.attribute_loss is set, but the discriminator has no attribute classifier: "
            "set its conditioning: auxiliary (and data.attributes), or remove attribute_loss"
        )
    if hparams.adversarial_weight == 0 and not any(isinstance(r, FeatureMatching) for r in g_regularizers or []):
        raise FacesError("G has no loss: adversarial_weight is 0 and g_regularizers has no FeatureMatching")
    if growth is not None:
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            if not hasattr(net, "grow"):
                raise FacesError(
                    f"model.growth needs networks that grow: model.{name} {type(net).__name__} does not "
                    "(use lightning_faces.nets.ProgressiveGenerator and ProgressiveDiscriminator)"
                )
        for other in ("lr_decay", "lr") if growth.learning_rates else ():
            if hparams[other] not in (None, "none"):
                raise FacesError(f"model.growth.learning_rates and model.{other} both set the learning rate: keep one")
    if hparams.lr is not None and hparams.lr_decay != "none":
        raise FacesError(
            "model.lr and model.lr_decay both set the learning rate: keep one (lr takes a Cosine schedule)"
        )
    if hparams.ema_ramp is not None and hparams.ema_decay is None and hparams.ema_half_life is None:
        raise FacesError("model.ema_ramp caps the EMA's half-life, but there is no EMA: set ema_decay or ema_half_life")


def check_optimizer(name: str, make: Any) -> None:
    """Builds the optimizer once on a stand-in parameter, so a bad setting (a negative learning
    rate, betas outside [0, 1)) stops the run now, before a run folder is made, in one line."""
    try:
        (make or dcgan_adam)([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise FacesError(f"model.{name}: {error} (fix its init_args in the config)") from error
