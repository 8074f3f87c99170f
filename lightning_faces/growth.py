"""Progressive growing (ProGAN): which resolution and fade-in weight each iteration trains at.

The schedule is a pure function of the number of real images shown so far, which the GAN keeps
in its checkpoints: a run resumed mid-fade lands on the same resolution and alpha as the run
that was not interrupted, with nothing else to save. Counting images rather than iterations
keeps the phases the same length when the batch size changes with the resolution, and under
DDP (every rank's images count).

The first resolution has a stable phase only; every later one a fade-in phase (alpha rising
linearly from 0 to 1 over ``fade_images``) and then a stable phase; the final resolution stays
stable until ``trainer.max_steps``. Real images are prepared once at the data's image size and
brought to the current resolution on the device (``real_images_at``), blended across a fade-in
the way G's output is.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from lightning_faces.errors import FacesError


class Phase(NamedTuple):
    """Where the schedule is after some number of images."""

    level: int  # the networks' level: 0 is 4x4, level k is 4 * 2**k pixels a side
    alpha: float  # weight of the newest block (1: fully in)
    images_into_level: int  # images shown since this level began (its fade-in's first image)

    @property
    def resolution(self) -> int:
        return 4 * 2**self.level


def level_of(resolution: int) -> int:
    return int(math.log2(resolution)) - 2


class Growth:
    """A growing schedule for ``GAN(growth=...)``, with networks that can grow (``nets.progressive``).

    Args:
        stable_images: real images shown in each stable phase (ProGAN: 600,000).
        fade_images: real images shown while each new resolution fades in (ProGAN: 600,000);
            0 adds each block at once.
        start_resolution: the resolution training starts at (a power of two from 4 up).
        batch_sizes: images per batch (per process) at each resolution, e.g. ``{4: 128, 64: 32}``;
            a resolution not listed uses ``data.batch_size``, which is the most any may use (the
            loader's batches are cut to this size, so one loader serves every phase).
        learning_rates: both players' learning rate at each resolution; one not listed keeps the
            optimizers' own.
        reset_optimizers: clear both optimizers' state (Adam's moments) when a new resolution
            starts, as ProGAN's official code does.
        freeze_images: for this many images after a new resolution starts, only its new layers
            learn (G's new block and its toRGB, D's new fromRGB and block); then all do. With
            ``fade_images: 0`` this is the grow-freeze-unfreeze recipe of some face-GAN projects.
    """

    def __init__(
        self,
        stable_images: int = 600_000,
        fade_images: int = 600_000,
        start_resolution: int = 4,
        batch_sizes: dict[int, int] | None = None,
        learning_rates: dict[int, float] | None = None,
        reset_optimizers: bool = False,
        freeze_images: int = 0,
    ) -> None:
        if stable_images < 1 or fade_images < 0 or freeze_images < 0:
            raise FacesError(
                f"growth: stable_images must be at least 1 and fade_images, freeze_images at least 0, got "
                f"{stable_images}, {fade_images}, {freeze_images}"
            )
        # keys may arrive as strings (a checkpoint's settings, JSON): resolutions are numbers
        try:
            batch_sizes = {int(k): int(v) for k, v in (batch_sizes or {}).items()}
            learning_rates = {int(k): float(v) for k, v in (learning_rates or {}).items()}
        except (TypeError, ValueError) as error:
            raise FacesError(f"growth.batch_sizes and learning_rates map resolutions to numbers: {error}") from error
        for name, resolutions in (
            ("start_resolution", [start_resolution]),
            ("batch_sizes", list(batch_sizes)),
            ("learning_rates", list(learning_rates)),
        ):
            for resolution in resolutions:
                if resolution < 4 or 2 ** int(math.log2(resolution)) != resolution:
                    raise FacesError(f"growth.{name}: {resolution} is not a resolution: use 4, 8, 16, 32, ...")
        if any(size < 1 for size in batch_sizes.values()):
            raise FacesError(f"growth.batch_sizes must all be at least 1, got {batch_sizes}")
        if any(lr <= 0 for lr in learning_rates.values()):
            raise FacesError(f"growth.learning_rates must all be positive, got {learning_rates}")
        self.stable_images, self.fade_images, self.freeze_images = stable_images, fade_images, freeze_images
        self.start_resolution = start_resolution
        self.batch_sizes, self.learning_rates = batch_sizes, learning_rates
        self.reset_optimizers = reset_optimizers

    def settings(self) -> dict[str, object]:
        """The arguments that rebuild this schedule (a checkpoint records them)."""
        return dict(vars(self))

    def check(self, final_resolution: int) -> None:
        """Raises FacesError unless the schedule fits networks that end at ``final_resolution``."""
        listed = [*self.batch_sizes, *self.learning_rates]
        too_large = [r for r in [self.start_resolution, *listed] if r > final_resolution]
        if too_large:
            raise FacesError(
                f"growth names resolution {max(too_large)}, above the image size {final_resolution}: "
                "lower it or raise data.image_size"
            )

    def phase(self, images: int, final_resolution: int) -> Phase:
        """The level and alpha after ``images`` real images, for networks ending at ``final_resolution``."""
        start, final = level_of(self.start_resolution), level_of(final_resolution)
        if images < self.stable_images or start == final:
            return Phase(start, 1.0, images)
        images -= self.stable_images
        for level in range(start + 1, final + 1):
            if images < self.fade_images:
                return Phase(level, images / self.fade_images, images)
            into = images
            images -= self.fade_images
            if images < self.stable_images or level == final:
                return Phase(level, 1.0, into)
            images -= self.stable_images
        raise AssertionError("unreachable: the final level's stable phase never ends")

    def images_to_reach(self, final_resolution: int) -> int:
        """Images shown before the final resolution is fully faded in."""
        steps = level_of(final_resolution) - level_of(self.start_resolution)
        return steps * (self.stable_images + self.fade_images)

    def batch_size(self, resolution: int, default: int) -> int:
        return self.batch_sizes.get(resolution, default)

    def frozen(self, phase: Phase) -> bool:
        """Whether only the newest block learns at this phase."""
        return phase.level > level_of(self.start_resolution) and phase.images_into_level < self.freeze_images


def enlarge(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, R, R) of a growing G shown at the final ``size``: each pixel a square (nearest)."""
    return images if images.shape[-1] >= size else F.interpolate(images, size=size, mode="nearest")


def real_images_at(images: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Real images (B, C, S, S) brought to ``resolution``, as the networks see them at a phase.

    Averaged down by whole factors (box filter: each pixel is the mean of the ones it covers); while
    a resolution fades in (alpha < 1), blended with the image at half the resolution, doubled by
    nearest neighbour, as G's output and D's input are blended (ProGAN does the same to its reals).
    """
    factor = images.shape[-1] // resolution
    if factor < 1 or factor * resolution != images.shape[-1]:
        raise FacesError(f"cannot bring {images.shape[-1]}px images to {resolution}px: sizes must be powers of two")
    current = F.avg_pool2d(images, factor) if factor > 1 else images
    if alpha < 1.0:
        below = F.interpolate(F.avg_pool2d(current, 2), scale_factor=2, mode="nearest")
        current = torch.lerp(below, current, alpha)
    return current


class Grower:
    """Applies a ``Growth`` schedule to growing networks in training: each iteration's phase,
    the optimizer resets and learning rates it asks for, and freezing the old layers.

    ``images_shown`` (real images trained on, over all ranks) is all the state it has; the GAN
    saves it in checkpoints, and the phase follows from it.

    Args:
        schedule: the ``Growth`` settings.
        nets: the networks that grow together (G, D and G's average), each with ``grow``.
        final_resolution: the data's image size, where growth ends.
    """

    def __init__(self, schedule: Growth, nets: list[nn.Module], final_resolution: int) -> None:
        schedule.check(final_resolution)
        self.schedule, self.nets, self.final_resolution = schedule, nets, final_resolution
        self.images_shown = 0
        self.frozen = False  # only the newest layers learn this iteration

    @property
    def level(self) -> int:
        return int(self.nets[0].level)  # the networks' buffer: a loaded checkpoint's level

    def set_phase(self, level: int, alpha: float) -> None:
        for net in self.nets:
            net.grow(level, alpha)

    def start(self, batch_size: int | None) -> None:
        """At the start of fit: checks the schedule's batch sizes against the loader's, and puts
        the networks at the phase of the images shown so far (the first grid shows it)."""
        larger = {r: b for r, b in self.schedule.batch_sizes.items() if batch_size is not None and b > batch_size}
        if larger:
            raise FacesError(
                f"growth.batch_sizes {larger} exceed data.batch_size {batch_size}, the most a batch can hold: "
                f"set data.batch_size to {max(larger.values())}"
            )
        phase = self.schedule.phase(self.images_shown, self.final_resolution)
        self.set_phase(phase.level, phase.alpha)

    def step(
        self, real: torch.Tensor, attributes: torch.Tensor, optimizers: list[torch.optim.Optimizer], world_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """This iteration's phase, from the images shown so far: sets it, and returns the batch
        at its resolution (the first ``batch_sizes[resolution]`` images) with what to log."""
        schedule = self.schedule
        phase = schedule.phase(self.images_shown, self.final_resolution)
        if phase.level != self.level and schedule.reset_optimizers and self.images_shown > 0:
            for optimizer in optimizers:
                optimizer.state.clear()  # Adam's moments and step counts start again
        self.set_phase(phase.level, phase.alpha)
        if schedule.learning_rates:
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    own = group.setdefault("growth_base_lr", group["lr"])  # the optimizer's own, kept
                    group["lr"] = schedule.learning_rates.get(phase.resolution, own)
        self.frozen = schedule.frozen(phase)
        count = min(schedule.batch_size(phase.resolution, real.shape[0]), real.shape[0])
        self.images_shown += count * world_size  # every rank's batch counts
        logs = {"growth/resolution": float(phase.resolution), "growth/alpha": phase.alpha}
        logs["growth/kimg"] = self.images_shown / 1000
        return real_images_at(real[:count], phase.resolution, phase.alpha), attributes[:count], logs

    def as_trained(self, real: torch.Tensor) -> torch.Tensor:
        """Real images at the resolution and fade-in the networks are at now (evaluation)."""
        net = self.nets[0]
        return real_images_at(real, net.resolution, float(net.alpha))

    def hold_old_layers(self, net: nn.Module) -> None:
        """While the schedule freezes the old layers, drops their gradients: the optimizer skips them."""
        if self.frozen:
            newest = {id(p) for p in net.newest_parameters()}
            for parameter in net.parameters():
                if id(parameter) not in newest:
                    parameter.grad = None
