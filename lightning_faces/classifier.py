"""An attribute classifier trained on real faces: the judge of how well a GAN obeys its attributes.

``python -m lightning_faces fit --config configs/attribute_classifier.yaml`` trains it on the
data's attributes (``data.attributes``, linked in); ``validate``/``test`` report the accuracy of
each attribute (``val/accuracy/<name>``) and their mean (``val/accuracy``). The
``control.AttributeAccuracy`` callback then asks it, during GAN training, whether generated faces
show the attributes they were asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_faces.data import parse_attribute_names
from lightning_faces.errors import FacesError
from lightning_faces.nets.contract import check_image_size


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    # conv, BN, ReLU at this resolution, then a strided conv that halves it
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttributeClassifier(L.LightningModule):
    """A small CNN that predicts attributes (multi-label) from images (B, 3, S, S) in [-1, 1].

    Args:
        attributes: attribute names to predict (linked from ``data.attributes``; ``all`` for 40).
        image_size: side of the images (linked from ``data.image_size``).
        width: channels of the first block; each halving of the resolution doubles them (to 8x).
        lr: AdamW's learning rate, decayed along a cosine to 0 at ``trainer.max_steps``.
        weight_decay: AdamW's weight decay.
    """

    def __init__(
        self,
        attributes: list[str] | None = None,
        image_size: int = 64,
        width: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.attribute_names = parse_attribute_names(attributes)  # the data checks they exist
        if not self.attribute_names:
            raise FacesError("the attribute classifier needs attributes to predict: set data.attributes (or all)")
        # every argument, and under the CLI its class path: `test --ckpt_path` reads them back
        self.save_hyperparameters()
        self.hparams["attributes"] = list(self.attribute_names)  # `all` spelled out
        depth = check_image_size(image_size, "the attribute classifier")
        self.image_size = image_size
        blocks, channels = [], 3
        for level in range(depth - 2):  # S -> S/2 -> ... -> 4
            out = width * min(2**level, 8)
            blocks.append(_block(channels, out))
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(channels, len(self.attribute_names)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> attribute logits (B, A); resized if S differs."""
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(images).mean(dim=(2, 3)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, attributes = batch
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, attributes)
        accuracy = ((logits > 0).float() == attributes).float().mean()
        self.log_dict({"train/loss": loss, "train/accuracy": accuracy}, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._correct = torch.zeros(len(self.attribute_names), device=self.device)
        self._count = torch.zeros((), device=self.device)

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, attributes = batch
        self._correct += ((self(images) > 0).float() == attributes).float().sum(0)
        self._count += images.shape[0]

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def _log_accuracy(self, prefix: str) -> None:
        # sums over ranks, then the fraction: each image of the split counted once
        correct = self.trainer.strategy.reduce(self._correct, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._count, reduce_op="sum").clamp_min(1)
        per_attribute = correct / count
        metrics = {
            f"{prefix}/accuracy/{name}": value for name, value in zip(self.attribute_names, per_attribute, strict=True)
        }
        metrics[f"{prefix}/accuracy"] = per_attribute.mean()
        self.log_dict(metrics)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        steps = self.trainer.max_steps
        if steps is None or steps < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> AttributeClassifier:
        """The classifier of a checkpoint, read without unpickling code (plain settings, tensors)."""
        from lightning_faces.checkpoint import is_classifier, load_checkpoint

        checkpoint = load_checkpoint(path, map_location=map_location)
        settings = checkpoint.get("hyper_parameters") or {}
        if "generator" in settings:
            raise FacesError(
                f"checkpoint {path} is a GAN's, not an attribute classifier's: a GAN goes first (`serve GAN.ckpt`), "
                f"a classifier after --classifier (train one with {CONFIG_HINT})"
            )
        if not is_classifier(settings):
            raise FacesError(f"checkpoint {path} is not an attribute classifier's (train one with {CONFIG_HINT})")
        known = ("attributes", "image_size", "width", "lr", "weight_decay")
        model = cls(**{key: settings[key] for key in known if key in settings})
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()


CONFIG_HINT = "fit --config configs/attribute_classifier.yaml"
