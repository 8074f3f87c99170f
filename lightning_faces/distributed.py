"""DDP for a GAN: each network in its own DistributedDataParallel, batch norm kept in step.

Lightning's ``DDPStrategy`` wraps the whole LightningModule in one DDP. A GAN step then has
parameters that no backward reaches (G's in D's update, D's frozen ones in G's), and DDP stops
with "parameters that were not used in producing the loss" unless ``find_unused_parameters``
makes it search the graph on every backward. ``GANDDPStrategy`` wraps G and D separately
instead: D's update runs through D's wrapper, G's update through G's, so each backward reaches
every parameter its wrapper owns and nothing has to be searched for.

The wrappers do not broadcast buffers: DDP copies rank 0's buffers in place before every forward
pass, and D's two passes (real, then fake) before one backward then trip autograd's in-place
check on batch norm's running statistics. The GAN averages those statistics over ranks once per
iteration instead (``average_batch_norm_statistics``), so every rank samples, scores FID and
saves with the same statistics, estimated from all ranks' batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy, StrategyRegistry
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_faces.errors import FacesError

_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


class GANDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that wraps G and D in a DDP each instead of the LightningModule in one.

    The CLI registers it as ``gan_ddp`` and in place of Lightning's own ``ddp`` names (``ddp``,
    ``ddp_spawn``, ``ddp_find_unused_parameters_true``, ...), with the same settings each, so
    ``strategy: ddp``, and ``auto`` on several devices (which Lightning resolves to ``ddp``),
    give a GAN this strategy (``register``). In Python, pass ``strategy=GANDDPStrategy()``. A
    module that is not a GAN is wrapped as Lightning's DDP would.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        named = inspect.signature(DDPStrategy.__init__).parameters
        # what is left after DDPStrategy's own arguments goes to every DistributedDataParallel
        self.ddp_options = {key: value for key, value in kwargs.items() if key not in named}

    def configure_ddp(self) -> None:
        module = self.lightning_module
        if not hasattr(module, "distribute"):
            super().configure_ddp()  # any other LightningModule: Lightning's own wrapping
            return
        module.distribute(self.wrap)

    def wrap(self, net: nn.Module) -> DistributedDataParallel:
        """One network in its own DDP, without the per-forward buffer broadcast (see above)."""
        # torch >= 2.15 names it forward_sync_buffers (and still syncs once, at wrapping)
        no_forward_sync = "forward_sync_buffers" if _HAS_FORWARD_SYNC else "broadcast_buffers"
        options = {k: v for k, v in self.ddp_options.items() if k not in ("broadcast_buffers", "forward_sync_buffers")}
        options[no_forward_sync] = False
        if hasattr(net, "grow"):  # growing: blocks above the current level (and a faded-out RGB layer) sit idle
            options["find_unused_parameters"] = True
        return DistributedDataParallel(net, device_ids=self.determine_ddp_device_ids(), **options)

    def teardown(self) -> None:
        module = self.lightning_module
        if module is not None and hasattr(module, "distribute"):
            module.distribute(None)
        super().teardown()


def register(registry: Any = StrategyRegistry) -> None:
    """Registers ``gan_ddp``, and ``GANDDPStrategy`` under each name Lightning gave ``DDPStrategy``.

    ``StrategyRegistry.register(..., override=True)`` is Lightning's supported way to give a
    strategy name to another class; each name keeps its settings (start method, unused
    parameter search). The CLI calls it before it builds a Trainer; importing the package does
    not, so a program that only imports it keeps Lightning's names as they were.
    """
    for name, entry in list(registry.items()):
        if entry["strategy"] is DDPStrategy:
            registry.register(name, GANDDPStrategy, entry["description"], override=True, **entry["init_params"])
    registry.register(
        "gan_ddp",
        GANDDPStrategy,
        "DDP with G and D wrapped apart (lightning_faces)",
        override=True,
        start_method="popen",
    )


def check_strategy(strategy: Any) -> None:
    """Refuses, in one line, a strategy that would not train the GAN as ``GANDDPStrategy`` does."""
    if type(strategy) is DDPStrategy:
        raise FacesError(
            "Lightning's DDPStrategy would wrap G and D as one module: pass "
            "strategy=lightning_faces.distributed.GANDDPStrategy() (the CLI gives strategy: ddp, and auto on "
            "several devices, that one)"
        )
    # DeepSpeed subclasses DDPStrategy but shards and wraps the model its own way
    if isinstance(strategy, ParallelStrategy) and not isinstance(strategy, GANDDPStrategy):
        raise FacesError(
            f"strategy {type(strategy).__name__} is not supported: use ddp (trainer.strategy: ddp or auto)"
        )


def batch_norm_statistics(nets: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Running means and variances of the plain batch-norm layers (SyncBatchNorm agrees already)."""
    tensors = []
    for net in nets:
        for layer in net.modules():
            plain = isinstance(layer, nn.modules.batchnorm._BatchNorm) and not isinstance(layer, nn.SyncBatchNorm)
            if plain and layer.track_running_stats:
                tensors += [layer.running_mean, layer.running_var]
    return tensors


def world_and_rank() -> tuple[int, int]:
    """This process's (world size, global rank): (1, 0) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def average_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Replaces each tensor by its mean over all ranks, in one collective call."""
    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, value in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(value.view_as(tensor))


def check_sync_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Refuses, in one line, SyncBatchNorm layers (``trainer.sync_batchnorm``) on a CPU."""
    if device.type == "cpu" and any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
        raise FacesError(
            "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU): "
            "on CPU set it to false, or give the networks norm: virtual or none"
        )
