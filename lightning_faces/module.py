"""The GAN LightningModule: manual optimization, D then G, with the stabilization tricks."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy
from torch import nn

from lightning_faces import objectives
from lightning_faces.augment import DiffAugment
from lightning_faces.data import to_float, to_uint8
from lightning_faces.data.attributes import switch_on
from lightning_faces.distributed import GANDDPStrategy, average_over_ranks, batch_norm_statistics
from lightning_faces.errors import FacesError
from lightning_faces.growth import Growth, enlarge, real_images_at
from lightning_faces.nets.contract import Scores
from lightning_faces.nets.virtual_batch_norm import uses_virtual_batch_norm
from lightning_faces.objectives import AttributeLoss, NonSaturating, Objective
from lightning_faces.regularizers import FeatureMatching, Regularizer, Step

ATTRIBUTE_POOL_SIZE = 10_000  # real attribute rows a conditional GAN keeps to sample from


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


def _describe_objects_in(hparams: dict[str, Any]) -> None:
    """Replaces objects passed to ``GAN(...)`` in Python by their class paths in ``hparams``.

    Built by the CLI, ``hparams`` holds each network's and objective's config (class_path and
    init_args), which a checkpoint stores and ``checkpoint.build_gan`` rebuilds from. Built in
    Python, it would hold the objects themselves, which a safe checkpoint cannot carry.
    """

    def describe(value: Any) -> Any:
        if isinstance(value, Growth):  # plain settings: a checkpoint can hold and rebuild them
            return {"class_path": f"{Growth.__module__}.{Growth.__qualname__}", "init_args": dict(vars(value))}
        if isinstance(value, nn.Module):
            # its settings are the object's own business: only its class is known here
            return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args_unknown": True}
        if isinstance(value, (list, tuple)):
            return [describe(item) for item in value]
        return value

    for key, value in list(hparams.items()):
        hparams[key] = describe(value)


class GAN(L.LightningModule):
    """A GAN of any generator, discriminator and objective, trained with manual optimization.

    Each batch is one iteration: D's update, then (every ``d_steps_per_g_step``-th batch) G's,
    then the EMA. The networks follow ``nets.contract``; the objective is an ``objectives``
    class; each player's regularizers add their penalties to its loss; ``augment`` (DiffAugment)
    transforms every image D sees, real and fake.

    ``trainer.global_step`` counts training iterations (batches), whatever the number of
    optimizer steps in each, so ``max_steps``, ``val_check_interval`` and checkpoint intervals
    all count iterations. Under DDP an iteration is one batch on every rank: a global batch of
    ``batch_size x world_size`` images.

    Training latents are drawn per iteration from ``(seed, iteration)``, for the global batch,
    and each rank takes its own slice: ranks never share latents, a resumed run draws what the
    uninterrupted run would have, and W ranks with batch B draw what one process with batch
    W*B draws.

    Args:
        generator: G, e.g. ``nets.DCGANGenerator`` or ``nets.ResNetGenerator``.
        discriminator: D, e.g. ``nets.DCGANDiscriminator`` or ``nets.ResNetDiscriminator``.
        objective: D's and G's losses; ``None`` is ``NonSaturating()`` (DCGAN's).
        d_regularizers: penalties added to D's loss (``R1``, ``GradientPenalty``,
            ``HistoricalAveraging``).
        g_regularizers: penalties added to G's loss (``FeatureMatching``, ``HistoricalAveraging``).
        augment: applied to real and fake images before D in training (``DiffAugment``).
        attribute_loss: the auxiliary classifier's loss, for a D with ``conditioning:
            auxiliary`` (``None``: ``AttributeLoss()``, weight 1).
        g_optimizer: optimizer for G; ``None`` is Adam(lr=2e-4, betas=(0.5, 0.999)).
        d_optimizer: optimizer for D; ``None`` likewise.
        lr_decay: ``linear`` lowers both learning rates linearly to 0 at ``trainer.max_steps``
            (SNGAN's schedule); ``none`` keeps them.
        adversarial_weight: weight of G's adversarial loss (0 with feature matching alone).
        d_steps_per_g_step: update G only every k-th batch, D every batch (SNGAN's n_dis: each
            D step on its own real batch, as in the paper).
        g_steps_per_d_step: update G k times per batch, each on fresh latents.
        d_skip_accuracy: skip D's update on batches where its accuracy is above this.
        gradient_clip_norm: clip each player's gradient norm to this (``None``: no clipping).
        ema_decay: keep an exponential moving average of G's weights with this decay (e.g.
            0.999) and use it for samples and FID; ``None`` turns it off. Its batch-norm
            statistics are estimated for its own weights before it samples (see
            ``refresh_ema_statistics``).
        ema_statistics_samples: latents the EMA generator's batch-norm statistics are estimated
            from, in batches of 64.
        vbn_reference_size: examples in the reference batches of networks with virtual batch norm.
        num_fixed_samples: size of the fixed latent batch rendered as a grid of samples.
        fresh_latents: G's update draws latents of its own and runs G again (two G forward passes
            per iteration). ``False`` (the default) updates G on the fakes D was just trained
            on, as the classic DCGAN loop does: one G pass, the same distribution of latents.
        channels_last: keep G, D and the image batches in channels-last memory layout. ``None``
            (the default) turns it on where it was measured to help: on CPUs (1.2x for DCGAN
            64x64 in fp32, see README "Speed"); on GPUs it is off unless set ``True``.
        compile: compile G and D with ``torch.compile`` at the start of fit (slow first
            iterations, then faster ones on a GPU; checkpoints keep the same keys).
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
        adversarial_weight: float = 1.0,
        d_steps_per_g_step: int = 1,
        g_steps_per_d_step: int = 1,
        d_skip_accuracy: float | None = None,
        gradient_clip_norm: float | None = None,
        ema_decay: float | None = None,
        ema_statistics_samples: int = 256,
        vbn_reference_size: int = 64,
        num_fixed_samples: int = 64,
        fresh_latents: bool = False,
        channels_last: bool | None = None,
        compile: bool = False,
        growth: Growth | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # optimizers are callables, not hyperparameters a checkpoint can hold as plain data
        with warnings.catch_warnings():  # Lightning's advice to ignore modules: they are described instead
            warnings.filterwarnings("ignore", message="Attribute '.*' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["g_optimizer", "d_optimizer"])
        _describe_objects_in(self.hparams)
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            settings = self.hparams.get(name)
            if isinstance(settings, dict) and isinstance(settings.get("init_args"), dict):
                # the CLI leaves the settings it links from the data out of those it hands over:
                # a checkpoint must still say what its networks were built for
                for key in ("image_size", "attributes"):
                    if hasattr(net, key):
                        settings["init_args"][key] = getattr(net, key)
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(net, nn.Module):
                raise FacesError(f"model.{name} must be a network (an nn.Module), got {type(net).__name__}")
        if not hasattr(generator, "latent_dim"):
            name = type(generator).__name__
            raise FacesError(f"model.generator {name} has no latent_dim attribute (see lightning_faces.nets.contract)")
        if d_steps_per_g_step < 1 or g_steps_per_d_step < 1:
            raise FacesError("d_steps_per_g_step and g_steps_per_d_step must be at least 1")
        if d_steps_per_g_step > 1 and g_steps_per_d_step > 1:
            raise FacesError("set d_steps_per_g_step or g_steps_per_d_step above 1, not both")
        self.automatic_optimization = False
        self.g_optimizer = g_optimizer or dcgan_adam
        self.d_optimizer = d_optimizer or dcgan_adam
        for name, optimizer in (("g_optimizer", self.g_optimizer), ("d_optimizer", self.d_optimizer)):
            check_optimizer(name, optimizer)
        self.generator, self.discriminator = generator, discriminator
        self.objective = objective if objective is not None else NonSaturating()
        self.augment = augment if augment is not None else nn.Identity()
        self.d_regularizers = nn.ModuleList(d_regularizers or [])
        self.g_regularizers = nn.ModuleList(g_regularizers or [])
        for regularizer in self.d_regularizers:
            regularizer.bind(self.discriminator)
        for regularizer in self.g_regularizers:
            regularizer.bind(self.generator)
        self.attribute_names: tuple[str, ...] = tuple(getattr(generator, "attributes", ()))
        judged = tuple(getattr(discriminator, "attributes", ()))
        if judged != self.attribute_names:
            raise FacesError(
                f"the generator is conditioned on {list(self.attribute_names)} but the discriminator on "
                f"{list(judged)}: give both the same attributes (the CLI links data.attributes into both)"
            )
        head = getattr(discriminator, "attribute_head", None)
        self.classifies = bool(head is not None and head.classifies)  # AC-GAN: D predicts attributes
        if attribute_loss is not None and not self.classifies:
            raise FacesError(
                "model.attribute_loss is set, but the discriminator has no attribute classifier: "
                "set its conditioning: auxiliary (and data.attributes), or remove attribute_loss"
            )
        self.attribute_loss = attribute_loss if attribute_loss is not None or not self.classifies else AttributeLoss()
        if adversarial_weight == 0 and not any(isinstance(r, FeatureMatching) for r in self.g_regularizers):
            raise FacesError("G has no loss: adversarial_weight is 0 and g_regularizers has no FeatureMatching")
        seeded = torch.Generator().manual_seed(seed)
        self.register_buffer("fixed_latents", torch.randn(num_fixed_samples, self.latent_dim, generator=seeded))
        if self.attribute_names:
            # real attribute rows (0/1), drawn from the training data when fit starts and kept in
            # checkpoints: fixed and evaluation samples get real combinations of attributes
            self.register_buffer("attribute_pool", torch.zeros(ATTRIBUTE_POOL_SIZE, len(self.attribute_names)))
        if uses_virtual_batch_norm(self.generator):
            self.generator.set_reference(torch.randn(vbn_reference_size, self.latent_dim, generator=seeded))
        if ema_statistics_samples < 1:
            raise FacesError(f"ema_statistics_samples must be at least 1, got {ema_statistics_samples}")
        if ema_decay is not None:
            if not 0 < ema_decay < 1:
                raise FacesError(f"ema_decay must be between 0 and 1 (e.g. 0.999), got {ema_decay}")
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.growth = growth
        if growth is not None:
            for name, net in (("generator", generator), ("discriminator", discriminator)):
                if not hasattr(net, "grow"):
                    raise FacesError(
                        f"model.growth needs networks that grow: model.{name} {type(net).__name__} does not "
                        "(use lightning_faces.nets.ProgressiveGenerator and ProgressiveDiscriminator)"
                    )
            growth.check(self.image_size)
            if growth.learning_rates and lr_decay != "none":
                raise FacesError("model.growth.learning_rates and model.lr_decay both set the learning rate: keep one")
        self.iteration = 0  # batches trained on; saved in checkpoints
        self.images_shown = 0  # real images trained on, over all ranks; saved in checkpoints (growth)
        self._frozen = False  # growth: only the newest layers learn this iteration
        self._replicas: dict[str, nn.Module] = {}  # DDP wrappers of G and D (GANDDPStrategy)
        self._latent_rng: torch.Generator | None = None
        self._compiled = False
        self._channels_last: bool | None = channels_last  # resolved for the device in setup
        self._ema_statistics_at: int | None = None  # the iteration the EMA's statistics belong to
        self.progress: dict[str, float] = {}  # shown by callbacks.ProgressBar

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> GAN:
        """The GAN of a checkpoint written through the CLI, read without unpickling code.

        Its networks, objective and regularizers are rebuilt from the settings it records
        (only this package's classes); ``load_from_checkpoint`` would instantiate whatever
        classes the file names. A bad file, or one from lightning_faces 0.1, is one line.
        """
        from lightning_faces.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path, map_location=map_location), path)

    @classmethod
    def from_loaded(cls, checkpoint: dict[str, Any], path: str | Path) -> GAN:
        """As ``from_checkpoint``, for a checkpoint already read with ``checkpoint.load_checkpoint``."""
        from lightning_faces.checkpoint import build, gan_settings

        model = cls(**{key: build(value, path) for key, value in gan_settings(checkpoint, path).items()})
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

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if type(strategy) is DDPStrategy:
            # built in Python: Lightning's class, not the one the names "ddp"/"auto" now give
            raise FacesError(
                "DDPStrategy(...) would wrap G and D as one module: pass strategy='ddp' by name, "
                "or lightning_faces.distributed.GANDDPStrategy(...) for DDP options"
            )
        # DeepSpeed subclasses DDPStrategy but shards and wraps the model its own way
        if isinstance(strategy, ParallelStrategy) and not isinstance(strategy, GANDDPStrategy):
            raise FacesError(
                f"strategy {type(strategy).__name__} is not supported: use ddp (trainer.strategy: ddp or auto)"
            )
        nets = [self.generator, self.discriminator] + ([self.generator_ema] if self.hparams.ema_decay else [])
        self._channels_last = self.hparams.channels_last
        if self._channels_last is None:
            self._channels_last = strategy.root_device.type == "cpu"
        if self._channels_last:
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

    def configure_optimizers(self) -> Any:
        optimizers = [self.d_optimizer(self.discriminator.parameters()), self.g_optimizer(self.generator.parameters())]
        if self.hparams.lr_decay == "none":
            return optimizers
        iterations = self.trainer.max_steps
        if iterations is None or iterations < 1:
            raise FacesError("model.lr_decay linear decays to 0 at trainer.max_steps: set trainer.max_steps")

        def remaining(iteration: int) -> float:
            return max(0.0, 1.0 - iteration / iterations)  # lr_t = lr_0 (1 - t/T)

        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, remaining) for o in optimizers]
        return optimizers, [{"scheduler": s, "interval": "step"} for s in schedulers]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, real_attributes = batch  # (B, 3, S, S) in [-1, 1]; (B, A) in {0, 1}, A = 0 unconditional
        hp = self.hparams
        d_opt, g_opt = self.optimizers()
        self._count_iterations_not_optimizer_steps(d_opt, g_opt)
        if self.growth is not None:  # this iteration's resolution: (B', 3, R, R), B' <= B
            real, real_attributes = self._grow(real, real_attributes, d_opt, g_opt)
        if self._channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        batch_size = real.shape[0]
        logs: dict[str, torch.Tensor] = {}

        # 1. D: learn to tell real from G's current fakes. D's passes go through its DDP
        # wrapper (and the augmentation) before one backward; D learns from detached fakes.
        discriminator = self._replicas.get("d", self.discriminator)
        real_labels = self._labels(real_attributes)

        def d_scores(images: torch.Tensor, labels: torch.Tensor | None = real_labels) -> Scores:
            return discriminator(self.augment(images), labels)

        # G's update this iteration reuses these fakes (one G forward pass per iteration, as the
        # classic DCGAN loop does) unless fresh_latents: then G runs here without gradients
        g_updates = (self.iteration + 1) % hp.d_steps_per_g_step == 0
        reused: tuple[torch.Tensor, torch.Tensor | None] | None = None
        fake_labels = self.fake_attributes(real_labels, slot=0)
        latents = self.training_latents(batch_size, slot=0)
        if g_updates and not hp.fresh_latents:
            # through G's DDP wrapper: its backward (in G's step) averages G's gradients
            reused = (self._replicas.get("g", self.generator)(latents, fake_labels), fake_labels)
            fake = reused[0].detach()
        else:
            with torch.no_grad():
                fake = self.generator(latents, fake_labels)
        real_logits, _, real_attribute_logits = d_scores(real)
        fake_logits, fake_features, _ = d_scores(fake, fake_labels)
        d_loss = self.objective.discriminator_loss(real_logits, fake_logits)
        if self.attribute_loss is not None:  # AC-GAN: D's head learns the real images' attributes
            attribute_loss = self.attribute_loss.discriminator_loss(real_attribute_logits, real_labels)
            logs["train/d_attribute_loss"] = attribute_loss.detach()
            d_loss = d_loss + attribute_loss
        accuracy = objectives.accuracy(real_logits.detach(), fake_logits.detach(), self.objective.threshold)
        # skipping needs the accuracy on the host: the one sync in the step, only when asked
        # for. Ranks decide together on their mean accuracy: a rank that skipped D's backward
        # while another ran it would leave DDP waiting for gradients that never come.
        skip_d = False
        if hp.d_skip_accuracy is not None:
            skip_d = self.trainer.strategy.reduce(accuracy, reduce_op="mean").item() > hp.d_skip_accuracy
        if not skip_d:
            step = Step(self.discriminator, real, fake, fake_features, d_scores, self.iteration)
            penalties = self._penalties(self.d_regularizers, step, "d", logs)
            d_opt.zero_grad(set_to_none=True)
            self.manual_backward(d_loss + penalties)
            self._hold_old_layers(self.discriminator)
            self._clip(d_opt)
            d_opt.step()
            for regularizer in self.d_regularizers:
                regularizer.after_step(self.discriminator)
        logs.update(
            {
                "train/d_loss": d_loss.detach(),
                "train/d_real": self.objective.probability(real_logits.detach()).mean(),  # mean D(x)
                "train/d_fake": self.objective.probability(fake_logits.detach()).mean(),  # mean D(G(z))
                "train/d_accuracy": accuracy,
                "train/d_skipped": torch.tensor(float(skip_d)),
            }
        )

        # 2. G: fool the (just updated) D, every k-th batch or k times per batch
        if g_updates:
            for g_step in range(hp.g_steps_per_d_step):
                fakes = reused if g_step == 0 else None  # further G steps draw fresh latents
                logs["train/g_loss"] = self._generator_step(g_opt, real, real_labels, 1 + g_step, logs, fakes)

        # every rank's batch-norm running statistics -> their mean
        if self.trainer.world_size > 1:
            average_over_ranks(batch_norm_statistics([self.generator, self.discriminator]))
        for scheduler in self._schedulers():
            scheduler.step()  # lr for the next iteration
        self.log_dict(logs)  # tensors: the loggers read them on the host at logging intervals only
        if self.iteration % self.trainer.log_every_n_steps == 0:
            # the progress bar shows host numbers refreshed at the same intervals (one transfer);
            # prog_bar=True would have the bar read every value at every refresh, waiting each time
            # for the device to finish the step
            values = torch.stack([logs["train/d_loss"], logs["train/d_real"], logs["train/d_fake"]]).tolist()
            self.progress = dict(zip(("d_loss", "D(x)", "D(G(z))"), values, strict=True))
            if self.growth is not None:
                self.progress.update(res=self.generator.resolution, alpha=float(self.generator.alpha))
        self.iteration += 1

    def _generator_step(
        self,
        g_opt: Any,
        real: torch.Tensor,
        real_labels: torch.Tensor | None,
        slot: int,
        logs: dict[str, torch.Tensor],
        fakes: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """One update of G: on ``fakes`` (images G made with gradients, and their attributes)
        when given, else on a fresh batch drawn from (seed, iteration, slot)."""
        with self.toggled_optimizer(g_opt):  # D's parameters need no gradients here
            if fakes is not None:
                fake, fake_labels = fakes
            else:  # through G's DDP wrapper (its gradients are averaged); D unwrapped and frozen
                fake_labels = self.fake_attributes(real_labels, slot)
                fake = self._replicas.get("g", self.generator)(self.training_latents(real.shape[0], slot), fake_labels)

            def g_scores(images: torch.Tensor, labels: torch.Tensor | None = real_labels) -> Scores:
                return self.discriminator(self.augment(images), labels)

            fake_logits, fake_features, fake_attribute_logits = g_scores(fake, fake_labels)
            g_loss = self.hparams.adversarial_weight * self.objective.generator_loss(fake_logits)
            if self.attribute_loss is not None:  # AC-GAN: fakes should show the attributes asked for
                attribute_loss = self.attribute_loss.generator_loss(fake_attribute_logits, fake_labels)
                logs["train/g_attribute_loss"] = attribute_loss.detach()
                g_loss = g_loss + attribute_loss
            step = Step(self.generator, real, fake, fake_features, g_scores, self.iteration)
            g_loss = g_loss + self._penalties(self.g_regularizers, step, "g", logs)
            g_opt.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            self._hold_old_layers(self.generator)
            self._clip(g_opt)
            g_opt.step()
        for regularizer in self.g_regularizers:
            regularizer.after_step(self.generator)
        if self.hparams.ema_decay is not None:
            self._update_ema_weights()
        return g_loss.detach()

    def _grow(
        self, real: torch.Tensor, attributes: torch.Tensor, d_opt: Any, g_opt: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sets this iteration's phase (from the images shown so far) and brings the batch to it."""
        growth = self.growth
        assert growth is not None
        phase = growth.phase(self.images_shown, self.image_size)
        new_level = phase.level != int(self.generator.level)  # the buffer holds the last iteration's
        if new_level and growth.reset_optimizers and self.images_shown > 0:
            for optimizer in (d_opt, g_opt):
                optimizer.optimizer.state.clear()  # Adam's moments and step counts start again
        self._set_phase(phase.level, phase.alpha)
        if growth.learning_rates:
            for optimizer in (d_opt, g_opt):
                for group in optimizer.optimizer.param_groups:
                    own = group.setdefault("growth_base_lr", group["lr"])  # the optimizer's own, kept
                    group["lr"] = growth.learning_rates.get(phase.resolution, own)
        self._frozen = growth.frozen(phase)
        count = min(growth.batch_size(phase.resolution, real.shape[0]), real.shape[0])
        real, attributes = real[:count], attributes[:count]
        self.images_shown += count * self.trainer.world_size  # every rank's batch counts
        kimg = self.images_shown / 1000
        self.log_dict({"growth/resolution": float(phase.resolution), "growth/alpha": phase.alpha, "growth/kimg": kimg})
        return real_images_at(real, phase.resolution, phase.alpha), attributes

    def _set_phase(self, level: int, alpha: float) -> None:
        for net in (self.generator, self.discriminator, getattr(self, "generator_ema", None)):
            if net is not None:
                net.grow(level, alpha)

    def _as_trained(self, real: torch.Tensor) -> torch.Tensor:
        """Real images at the resolution and fade-in the networks are at (growth), else as they are."""
        if self.growth is None:
            return real
        return real_images_at(real, self.generator.resolution, float(self.generator.alpha))

    def _hold_old_layers(self, net: nn.Module) -> None:
        """While growth freezes the old layers, drops their gradients: the optimizer skips them."""
        if self._frozen:
            newest = {id(p) for p in net.newest_parameters()}
            for parameter in net.parameters():
                if id(parameter) not in newest:
                    parameter.grad = None

    @staticmethod
    def _penalties(regularizers: nn.ModuleList, step: Step, player: str, logs: dict[str, torch.Tensor]) -> Any:
        """The sum of the player's penalties that apply at this step (0 when none); logs each."""
        total: Any = 0.0
        for regularizer in regularizers:
            penalty = regularizer.penalty(step)
            if penalty is not None:
                logs[f"train/{player}_{regularizer.name}"] = penalty.detach()
                total = total + penalty
        return total

    def _schedulers(self) -> list[Any]:
        if self.hparams.lr_decay == "none":
            return []
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers]

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
                self.generator_ema(self.sample_latents(count, seeded), self.sample_attributes(count, seeded))
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
        return torch.randn(count, self.latent_dim, device=self.device, generator=generator)

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
        latents = torch.randn(world * count, self.latent_dim, device=self.device, generator=self._latent_rng)
        return latents[rank * count : (rank + 1) * count]

    def _labels(self, attributes: torch.Tensor) -> torch.Tensor | None:
        """A batch's attributes as the networks take them: None for an unconditional GAN."""
        return attributes.to(self.dtype) if self.attribute_names else None

    def fake_attributes(self, real_labels: torch.Tensor | None, slot: int) -> torch.Tensor | None:
        """The attributes G is asked for in training: the real batch's rows in a random order.

        They are rows of random training images, so fakes are asked for combinations in the
        proportions the data has, never impossible ones; the order is drawn from (seed,
        iteration, slot), as the latents are.
        """
        if real_labels is None:
            return None
        key = np.random.SeedSequence([self.hparams.seed, self.iteration, slot, 1]).generate_state(1, np.uint64)[0]
        order = torch.randperm(real_labels.shape[0], generator=torch.Generator().manual_seed(int(key >> 1)))
        return real_labels[order.to(real_labels.device)]

    def sample_attributes(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``count`` real attribute rows (count, A) drawn from the pool; None when unconditional."""
        if not self.attribute_names:
            return None
        pool = self.attribute_pool
        picked = torch.randint(len(pool), (count,), device=pool.device, generator=generator)
        return pool[picked]

    @property
    def fixed_attributes(self) -> torch.Tensor | None:
        """The attributes of the fixed latents (the pool's first rows); None when unconditional."""
        return self.attribute_pool[: len(self.fixed_latents)] if self.attribute_names else None

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, attributes: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """Renders latents (B, latent_dim) into images (B, 3, S, S) in [-1, 1].

        A conditional GAN needs ``attributes`` (B, A) in {0, 1}, in the order of
        ``attribute_names``. Uses G's EMA when there is one (unless ``ema`` is False), in eval
        mode (batch-norm running statistics; the EMA's are estimated for its own weights first).
        """
        if self.attribute_names and attributes is None:
            raise FacesError(f"this GAN is conditioned on {', '.join(self.attribute_names)}: pass their values")
        generator = self.generator
        if ema and self.hparams.ema_decay is not None:
            self.refresh_ema_statistics()
            generator = self.generator_ema
        was_training = generator.training
        generator.eval()
        try:
            labels = None if attributes is None or not self.attribute_names else attributes.to(self.device, self.dtype)
            return enlarge(generator(latents.to(self.device), labels), self.image_size)  # growing: at full size
        finally:
            generator.train(was_training)

    # validation and test: D's view of held-out real images against fresh fakes
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, prefix: str) -> None:
        real, real_attributes = batch
        real = self._as_trained(real)
        real_labels = self._labels(real_attributes)
        fake_labels = self.fake_attributes(real_labels, slot=batch_idx)
        # the same latents for batch i at every evaluation, so numbers compare across epochs
        # (and different latents on each rank, whose batch i holds different images)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        seeded = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 1 + batch_idx * world + rank)
        fake = self.generator(self.sample_latents(real.shape[0], seeded), fake_labels)
        real_logits = self.discriminator(real, real_labels).logits
        fake_logits = self.discriminator(fake, fake_labels).logits
        objective = self.objective  # in eval mode here: no label smoothing
        metrics = {
            f"{prefix}/d_loss": objective.discriminator_loss(real_logits, fake_logits),
            f"{prefix}/g_loss": objective.generator_loss(fake_logits),
            f"{prefix}/d_real": objective.probability(real_logits).mean(),
            f"{prefix}/d_fake": objective.probability(fake_logits).mean(),
            f"{prefix}/d_accuracy": objectives.accuracy(real_logits, fake_logits, objective.threshold),
        }
        self.log_dict(metrics, on_epoch=True, batch_size=real.shape[0], sync_dist=True)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Turns sample indices into images; index i always gives the same face for a checkpoint.

        A conditional GAN gives image i the attributes of pool row i, with those the user asked
        for (``data.predict_attributes``) set to the values asked, and attributes exclusive with
        one asked on switched off.
        """
        indices, values, asked = batch if isinstance(batch, (list, tuple)) else (batch, None, None)
        latents = torch.stack(
            [torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(int(i))) for i in indices]
        )
        attributes = None
        if self.attribute_names:
            if values is None or values.shape[1] != len(self.attribute_names):
                raise FacesError(
                    f"the model is conditioned on {' '.join(self.attribute_names)}: set data.attributes to them"
                )
            pool = self.attribute_pool
            attributes = pool[indices.to(pool.device) % len(pool)]
            asked, values = asked[0].bool().tolist(), values[0].to(pool)  # the same for every image
            for column, name in enumerate(self.attribute_names):
                if asked[column] and values[column] == 1:
                    attributes = switch_on(attributes, self.attribute_names, name)  # Black_Hair=1: not blond
            for column in (c for c, on in enumerate(asked) if on):
                attributes[:, column] = values[column]
        images = self.generate(latents, attributes)
        return {"indices": indices.cpu(), "images": to_uint8(images).cpu()}

    def on_fit_start(self) -> None:
        if self.device.type == "cpu" and any(isinstance(m, nn.SyncBatchNorm) for m in self.modules()):
            raise FacesError(
                "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU): "
                "on CPU set it to false, or give the networks norm: virtual or none"
            )
        if self.attribute_names and self.iteration == 0:
            self.attribute_pool.copy_(self._training_attribute_rows())
        if uses_virtual_batch_norm(self.discriminator) and self.discriminator.reference is None:
            self.discriminator.set_reference(self._reference_images())
        if self.growth is not None:
            loaded = getattr(self.trainer.datamodule, "batch_size", None)
            larger = {r: b for r, b in self.growth.batch_sizes.items() if loaded is not None and b > loaded}
            if larger:
                raise FacesError(
                    f"growth.batch_sizes {larger} exceed data.batch_size {loaded}, the most a batch can hold: "
                    f"set data.batch_size to {max(larger.values())}"
                )
            phase = self.growth.phase(self.images_shown, self.image_size)
            self._set_phase(phase.level, phase.alpha)  # the first grid shows where training starts

    def _training_attribute_rows(self) -> torch.Tensor:
        """Attribute rows of random training images (the same on every rank), for the pool."""
        data = self.trainer.datamodule
        names = tuple(getattr(data, "attributes", ()))
        if names != self.attribute_names:
            raise FacesError(
                f"the GAN is conditioned on {list(self.attribute_names)} but data.attributes is {list(names)}: "
                "set data.attributes to the GAN's"
            )
        return data.attribute_rows(ATTRIBUTE_POOL_SIZE, self.hparams.seed).to(self.attribute_pool)

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
        checkpoint["images_shown"] = self.images_shown
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version  # a resumed run continues this W&B run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        self.images_shown = int(checkpoint.get("images_shown", 0))
        # reference batches are buffers that start empty: give them the saved shapes first
        state = checkpoint["state_dict"]
        nets = [("generator", self.generator), ("discriminator", self.discriminator)]
        if self.hparams.ema_decay is not None:
            nets.append(("generator_ema", self.generator_ema))
        for name, net in nets:
            if f"{name}.reference" in state:
                net.set_reference(state[f"{name}.reference"])
