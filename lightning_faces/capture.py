"""A training iteration written for CUDA-graph capture (``GAN(cuda_graph=True)``).

On a GPU the default DCGAN (width 64, batch 128) is launch-bound: an iteration is a few dozen
small kernels with Python between them, so it runs at the same speed in any precision. A CUDA
graph records the iteration's kernels once and replays them with one launch. Lightning does not
capture a training step (its issue 10174, closed as won't-fix), so the GAN does it here:

- ``CapturedIteration.step`` is one iteration as ``GAN.training_step`` runs it for the settings
  ``check`` accepts (D's update, G's update on the same fakes, G's average), written so nothing
  in it waits for the device or branches on a tensor: its inputs (the real batch, the latents,
  the attributes, the average's weight) sit in buffers that every iteration copies into, and both
  optimizers step inside it (Adam with ``capturable``).
- On a GPU it runs eagerly for ``warmup`` iterations on a side stream (as capture wants), is then
  captured once, and replayed from then on. On a CPU it runs eagerly: the same arithmetic as the
  eager step, which the tests check weight for weight.

What it does not take (each refused in one line by ``check``): regularizers (R1/R2's double
backward, lazy penalties), augmentation, growth, AC-GAN's attribute loss, D every k-th batch or
G several times a batch, fresh latents, D skipping, gradient clipping, learning-rate decay or
schedules, ``compile``, 16-mixed (its gradient scaler) and DDP.
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_faces.errors import FacesError

WARMUP = 3  # eager iterations before capture: the allocator and the optimizers' state settle


def check(gan: L.LightningModule) -> None:
    """Refuses, in one line, settings the captured iteration does not run (at the start of fit)."""
    hp, trainer = gan.hparams, gan.trainer
    refused = {
        "model.d_regularizers": bool(hp.d_regularizers),
        "model.g_regularizers": bool(hp.g_regularizers),
        "model.augment": hp.augment is not None,
        "model.growth": hp.growth is not None,
        "model.attribute_loss": gan.attribute_loss is not None,
        "model.d_steps_per_g_step above 1": hp.d_steps_per_g_step != 1,
        "model.g_steps_per_d_step above 1": hp.g_steps_per_d_step != 1,
        "model.fresh_latents": hp.fresh_latents,
        "model.d_skip_accuracy": hp.d_skip_accuracy is not None,
        "model.gradient_clip_norm": hp.gradient_clip_norm is not None,
        "model.lr_decay linear": hp.lr_decay != "none",
        "model.lr or model.beta2 as a schedule": bool(gan.optimizer_schedules),
        "model.compile": hp.compile,
        "trainer.precision 16-mixed": str(trainer.precision) == "16-mixed",
        "more than one process (DDP)": trainer.world_size > 1,
    }
    found = [name for name, present in refused.items() if present]
    if found:
        raise FacesError(
            f"model.cuda_graph captures the plain iteration (D, then G on the same fakes, then G's average) "
            f"and cannot take {', '.join(found)}: remove {'it' if len(found) == 1 else 'them'}, "
            "or set model.cuda_graph false"
        )


class CapturedIteration:
    """One GAN's training iteration, run eagerly, or captured once and replayed on a GPU.

    Call it with the iteration's inputs; it returns the iteration's logs (tensors that the next
    call overwrites on a GPU: read them before then).
    """

    def __init__(self, gan: L.LightningModule, warmup: int = WARMUP) -> None:
        self.gan, self.warmup = gan, warmup
        self.inputs: dict[str, torch.Tensor] = {}  # the buffers every iteration copies into
        self.outputs: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.runs = 0

    def __call__(self, **inputs: torch.Tensor | float | None) -> dict[str, torch.Tensor]:
        self._fill(inputs)
        if self.gan.device.type != "cuda":
            return self.step(**self.inputs)
        if self.runs < self.warmup:  # eagerly, on a side stream (capture's requirement)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self.step(**self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.runs += 1
            return outputs
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            # records the kernels (they run at the replay below); thread_local: a loader's
            # pin-memory thread may use CUDA meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = self.step(**self.inputs)
        self.graph.replay()
        return self.outputs

    def _fill(self, inputs: dict[str, torch.Tensor | float | None]) -> None:
        present = {name: value for name, value in inputs.items() if value is not None}
        if not self.inputs:
            device = self.gan.device
            self.inputs = {
                name: torch.tensor(value, device=device) if isinstance(value, float) else value.clone()
                for name, value in present.items()
            }
            return
        for name, value in present.items():
            buffer = self.inputs[name]
            if isinstance(value, float):
                buffer.fill_(value)
            elif value.shape != buffer.shape:
                raise FacesError(
                    f"model.cuda_graph replays fixed shapes, but this batch's {name} is {tuple(value.shape)} "
                    f"after {tuple(buffer.shape)}: keep every batch the same size"
                )
            else:
                buffer.copy_(value)

    def step(
        self,
        real: torch.Tensor,
        latents: torch.Tensor,
        real_labels: torch.Tensor | None = None,
        fake_labels: torch.Tensor | None = None,
        ema_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The iteration: ``GAN.training_step``'s arithmetic in its order, with no host syncs."""
        gan = self.gan
        generator, discriminator, objective = gan.generator, gan.discriminator, gan.objective
        d_optimizer, g_optimizer = (optimizer.optimizer for optimizer in gan.optimizers())
        d_params, g_params = _trained(discriminator), _trained(generator)

        # 1. D's update on G's fakes (detached) and the real batch
        fake = generator(latents, fake_labels)
        real_scores = discriminator(real, real_labels)
        fake_scores = discriminator(fake.detach(), fake_labels)
        d_loss = objective.discriminator_loss(real_scores.logits, fake_scores.logits)
        readings = objective.readings(real_scores.logits.detach(), fake_scores.logits.detach())
        _step(d_optimizer, d_params, _gradients(d_loss, d_params))

        # 2. G's update through the D just updated, on the same fakes; D frozen as the eager step's
        # toggled optimizer does (so bf16 autocast casts D's new weights, not cached old ones)
        discriminator.requires_grad_(False)
        try:
            fake_logits = discriminator(fake, fake_labels).logits
            real_logits = real_scores.logits.detach()
            if getattr(objective, "relativistic", False):
                with torch.no_grad():
                    real_logits = discriminator(real, real_labels).logits
            g_loss = gan.hparams.adversarial_weight * objective.generator_loss(real_logits, fake_logits)
            _step(g_optimizer, g_params, _gradients(g_loss, g_params))
        finally:
            for param in d_params:
                param.requires_grad_(True)

        # 3. G's average, weighted by a tensor (a number would be fixed at capture)
        if gan.ema is not None:
            with torch.no_grad():
                for average, weight in zip(gan.ema.network.parameters(), generator.parameters(), strict=True):
                    average.lerp_(weight, ema_weight)
        logs = {f"train/{name}": value for name, value in readings.items()}
        return {**logs, "train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()}


def _trained(net: torch.nn.Module) -> list[torch.Tensor]:
    return [param for param in net.parameters() if param.requires_grad]


def _gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """``loss``'s gradients for ``params``; None for a parameter it does not use (as backward leaves it)."""
    return torch.autograd.grad(loss, params, allow_unused=True)


def _step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: tuple[torch.Tensor | None, ...]) -> None:
    """One optimizer step on ``grads``, leaving no gradient behind: the Lightning optimizer step
    that runs the iteration as its closure then finds none, and changes nothing."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    optimizer.step()
    for param in params:
        param.grad = None


def make_capturable(optimizers: list[torch.optim.Optimizer]) -> None:
    """Lets the optimizers step inside a CUDA graph (their step counts live on the device)."""
    for optimizer in optimizers:
        if not all("capturable" in group for group in optimizer.param_groups):
            raise FacesError(
                f"model.cuda_graph needs optimizers that can step inside a CUDA graph (Adam, AdamW), "
                f"not {type(optimizer).__name__}: change the optimizer, or set model.cuda_graph false"
            )
        for group in optimizer.param_groups:
            group["capturable"] = True
