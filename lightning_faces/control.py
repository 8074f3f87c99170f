"""How well a conditional GAN obeys its attributes, judged by a trained ``AttributeClassifier``.

``AttributeAccuracy`` (a callback, scheduled like FID) generates faces for real attribute rows
and logs how often the classifier agrees with what was asked: ``val/attribute_accuracy`` (the
mean over attributes) and ``val/attribute_accuracy/<name>``. ``switch_effects`` measures what
switching one attribute on does to the classifier's view of every attribute.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_faces.classifier import CONFIG_HINT, AttributeClassifier
from lightning_faces.data.attributes import switch_on
from lightning_faces.errors import FacesError
from lightning_faces.evaluation import Periodic


def load_judge(path: str | Path, attributes: tuple[str, ...]) -> tuple[AttributeClassifier, list[int]]:
    """The classifier of ``path`` and the columns of its output that are ``attributes``.

    Raises FacesError when it does not predict every one of them.
    """
    if not Path(path).is_file():
        raise FacesError(
            f"attribute classifier {path} does not exist: train one first (python -m lightning_faces "
            f"{CONFIG_HINT}, or configs/attribute_classifier_quickstart.yaml for drawn faces) and point "
            "classifier_path at its checkpoint"
        )
    classifier = AttributeClassifier.from_checkpoint(path)
    missing = [name for name in attributes if name not in classifier.attribute_names]
    if missing:
        raise FacesError(
            f"attribute classifier {path} does not predict {', '.join(missing)}: train one on the GAN's "
            "attributes (or on all)"
        )
    return classifier.requires_grad_(False), [classifier.attribute_names.index(name) for name in attributes]


@torch.no_grad()
def switch_effects(
    gan: Any, classifier: AttributeClassifier, columns: list[int], count: int = 256, seed: int = 0
) -> torch.Tensor:
    """(A, A) matrix: row k is the mean change of the classifier's probability of each attribute
    when attribute k is switched on (others exclusive with it off) for the same latents and the
    same other attributes, against the same faces with k off. A GAN in control has a large
    diagonal and small entries elsewhere (except for attributes exclusive with k)."""
    names = list(gan.attribute_names)
    seeded = torch.Generator(gan.device).manual_seed(seed)
    latents, base = gan.genes.sample(count, seeded)
    classifier = classifier.to(gan.device).eval()
    rows = []
    for column, name in enumerate(names):
        off = base.clone()
        off[:, column] = 0.0
        probabilities = [
            torch.sigmoid(classifier(gan.generate(latents, attributes))[:, columns])
            for attributes in (off, switch_on(off, names, name))
        ]
        rows.append((probabilities[1] - probabilities[0]).mean(0))
    return torch.stack(rows)


class AttributeAccuracy(Periodic):
    """Every few epochs or steps: the classifier's agreement with the attributes G was asked for.

    Faces come from ``num_samples`` fixed latents, each with a real attribute row from the GAN's
    pool (drawn once), through G or its EMA in eval mode, as FID scores them. Under DDP each rank
    judges its share and the counts are summed: one accuracy over all samples.

    Args:
        classifier_path: checkpoint of an ``AttributeClassifier`` that predicts (at least) the
            GAN's attributes; checked when training starts.
        every_n_epochs: epochs between evaluations (0: none at epoch ends).
        every_n_steps: iterations between evaluations (0: none mid-epoch).
        num_samples: generated faces per evaluation.
        batch_size: faces per forward pass.
    """

    metric = "val/attribute_accuracy"
    at_train_end = True  # the figure of the final weights

    def __init__(
        self,
        classifier_path: str,
        every_n_epochs: int = 1,
        every_n_steps: int = 0,
        num_samples: int = 1000,
        batch_size: int = 100,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise FacesError("AttributeAccuracy needs num_samples and batch_size of at least 1")
        super().__init__(every_n_epochs, every_n_steps)
        self.classifier_path = classifier_path
        self.num_samples, self.batch_size = num_samples, batch_size
        self.classifier: AttributeClassifier | None = None
        self.columns: list[int] = []
        self._samples: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.classifier is not None:
            return
        names = tuple(getattr(module, "attribute_names", ()))
        if not names:
            raise FacesError("AttributeAccuracy measures a conditional GAN: set data.attributes (or drop the callback)")
        self.classifier, self.columns = load_judge(self.classifier_path, names)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> torch.Tensor | None:
        assert self.classifier is not None, "setup() runs first"
        started = time.perf_counter()
        classifier = self.classifier.to(module.device).eval()
        if self._samples is None:
            seeded = torch.Generator(module.device).manual_seed(20_000)
            latents, attributes = module.genes.sample(self.num_samples, seeded)
            self._samples = (latents.cpu(), attributes.cpu())
        mine = slice(trainer.global_rank, None, trainer.world_size)
        latents, asked = self._samples[0][mine], self._samples[1][mine]
        correct = torch.zeros(len(self.columns), device=module.device)
        for start in range(0, len(latents), self.batch_size):
            batch = slice(start, start + self.batch_size)
            wanted = asked[batch].to(module.device)
            logits = classifier(module.generate(latents[batch], wanted))[:, self.columns]
            correct += ((logits > 0).float() == wanted).float().sum(0)
        per_attribute = trainer.strategy.reduce(correct, reduce_op="sum") / self.num_samples
        mean = per_attribute.mean()
        seconds = time.perf_counter() - started
        metrics = {"val/attribute_accuracy": float(mean), "val/attribute_accuracy_seconds": seconds}
        metrics.update(
            {
                f"val/attribute_accuracy/{name}": float(v)
                for name, v in zip(module.attribute_names, per_attribute, strict=True)
            }
        )
        for logger in trainer.loggers:  # once, at this iteration (as FID)
            logger.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(f"attribute accuracy {float(mean):.3f} at iteration {trainer.global_step}")
        return mean
