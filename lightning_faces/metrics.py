"""FID while training: torchmetrics' FrechetInceptionDistance, with real statistics cached on disk.

FID (Heusel et al., 2017) compares the mean and covariance of Inception features of real and
generated images. torchmetrics keeps them as sums (features, feature outer products, count),
summed over DDP ranks at ``compute()``. The real sums depend only on the data, so they are
computed once per (dataset, split, resolution, preprocessing, sample count, feature extractor),
saved, and reused by later, resumed and requeued runs; only rank 0 loads them, the other ranks
hold zeros, so the cross-rank sum counts each real image exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from lightning_faces.checkpoint import load_checkpoint
from lightning_faces.data import to_uint8
from lightning_faces.errors import FacesError
from lightning_faces.evaluation import Periodic
from lightning_faces.files import atomic_path

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
WEIGHTS_KEY = "fid.feature_extractor_weights_path"


def default_weights_file() -> Path:
    """Where torch-fidelity (and so torchmetrics) looks for the Inception weights first."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_faces" / "fid"


def download_weights(output: str | Path | None = None) -> Path:
    """Fetches the official FID Inception weights (run on a machine with internet access)."""
    target = Path(output) if output else default_weights_file()
    if target.exists():
        return target
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline node fails within seconds or half a minute, never hangs
    try:
        print(f"FID: downloading the Inception weights (92 MB) to {target}", file=sys.stderr)
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(INCEPTION_URL, str(tmp), progress=True)
    except OSError as error:
        raise FacesError(f"downloading the Inception weights from {INCEPTION_URL} failed: {error}") from error
    finally:
        socket.setdefaulttimeout(previous)
    return target


def check_inception_weights(path: str | None, option: str = f"--{WEIGHTS_KEY}") -> str | None:
    """Makes sure FID's Inception weights load, before any training or scoring.

    With no path and no file at torch-fidelity's default location, tries to download it there
    (a machine with internet); when that fails too, stops with what to do. ``option`` is how
    the calling command names the weights setting. Returns the path to hand to torchmetrics
    (``None``: torch-fidelity's default file, which then exists).
    """
    advice = (
        f"set {option} PATH to a copy of the file, or run "
        "`python -m lightning_faces download-weights` on a machine with internet access (a login node)"
    )
    if path is None:
        file = default_weights_file()
        if not file.exists():
            try:
                download_weights()
            except FacesError as error:
                raise FacesError(
                    f"FID needs the Inception weights, and {file} does not exist ({error}): {advice}"
                ) from error
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FacesError(f"{option} {file} is not a file: {advice}")
    # torch-fidelity unpickles the file freely; read it safely first, so a file from elsewhere
    # cannot run code, and check it is Inception before a run depends on it
    weights = load_checkpoint(file, role=f"{option}", advice=advice)
    found = {key: tuple(value.shape) for key, value in weights.items() if isinstance(value, torch.Tensor)}
    if any(found.get(key) != shape for key, shape in INCEPTION_SHAPES.items()):
        what = "a training checkpoint" if "state_dict" in weights and "hyper_parameters" in weights else "another file"
        raise FacesError(
            f"{option} {file} is not Inception weights (it is {what}: torch-fidelity's FeatureExtractorInceptionV3 "
            f"state dict, with {', '.join(INCEPTION_SHAPES)}, was expected): {advice}"
        )
    return None if path is None else str(file)


# tensors every copy of FID's Inception (torch-fidelity's layout) holds, with their shapes
INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1)}


RESIZES = {
    # what each setting hands torchmetrics' ``antialias`` flag
    "tensorflow": False,  # bilinear as TensorFlow 1 did it: the original FID code, hence published numbers
    "antialiased": True,  # torchmetrics' default since 1.8: smoother, and different by a few points
}


def make_fid(
    weights_path: str | None = None,
    feature_extractor: nn.Module | None = None,
    resize: str = "tensorflow",
    fast: bool = True,
) -> nn.Module:
    """torchmetrics' FID with 2048-d Inception features, or any feature network (tests).

    ``resize`` is how Inception's 299x299 input is made from the images (see ``RESIZES``).
    ``fast`` keeps Inception's weights in channels-last layout and, on a CPU, runs it on at
    most ``CPU_CHUNK`` images at a time: the same features to float noise, in half the time
    (``benchmarks.fid``; README "Speed").
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if resize not in RESIZES:
        raise FacesError(f"FID resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    if feature_extractor is not None:
        return FrechetInceptionDistance(feature=feature_extractor, reset_real_features=False)
    try:
        metric = FrechetInceptionDistance(
            feature=2048,
            reset_real_features=False,
            feature_extractor_weights_path=weights_path,
            antialias=RESIZES[resize],
        )
    except ModuleNotFoundError as error:
        raise FacesError(f"FID needs torch-fidelity ({error}): pip install torch-fidelity") from error
    if fast:
        metric.inception = InceptionInChunks(metric.inception.to(memory_format=torch.channels_last))
    return metric


CPU_CHUNK = 25  # images per Inception pass on a CPU: 1.16x faster than 100 (smaller working set)


class InceptionInChunks(nn.Module):
    """FID's Inception, run on at most ``CPU_CHUNK`` images at a time on a CPU (whole batches on
    a GPU, which wants them large); features are per image, so they do not change."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu" or len(images) <= CPU_CHUNK:
            return self.inception(images)
        return torch.cat([self.inception(part) for part in images.split(CPU_CHUNK)])


def real_sample(size: int, count: int, seed: int = 0) -> list[int]:
    """``count`` indices drawn at random (seeded) from ``size`` images, in file order.

    FID's real statistics come from a random sample, not the first images of a split (files are
    often sorted by something: identity, date, source).
    """
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
    return sorted(order.tolist())


def describe_protocol(protocol: dict[str, Any]) -> str:
    """One line that says how an FID number was measured."""
    return ", ".join(f"{key} {value}" for key, value in protocol.items())


def update_from_loader(
    update: Callable[..., Any], loader: DataLoader, real: bool, device: torch.device, show: bool
) -> list[Any]:
    """Feeds (uint8 image, ...) batches of a loader to ``update`` (a metric's), with a progress
    bar; returns what it returned for each batch."""
    out = []
    with tqdm(total=len(loader.dataset), desc="FID: real statistics", unit="img", disable=not show, leave=False) as bar:
        for batch in loader:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            out.append(update(images.to(device), real=real))
            bar.update(images.shape[0])
    return out


def _rows(batches: list[torch.Tensor | None], fid: nn.Module, device: torch.device) -> torch.Tensor:
    """Feature batches stacked (N, D); (0, D) for a rank that had no images (fewer than ranks)."""
    present = [batch for batch in batches if batch is not None]
    if present:
        return torch.cat(present)
    return torch.zeros(0, int(fid.real_features_sum.shape[0]), dtype=torch.float64, device=device)


def gather_rows(trainer: L.Trainer, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (N_r, D) stacked (rank 0's first); the ranks' counts may differ by one."""
    if trainer.world_size == 1:
        return rows
    counts = trainer.strategy.all_gather(torch.tensor(len(rows), device=rows.device))
    padded = torch.zeros(int(counts.max()), rows.shape[1], dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    gathered = trainer.strategy.all_gather(padded)  # (W, max, D)
    return torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])


METRICS = ("fid", "kid", "precision", "recall", "is")  # what evaluate and fid.metrics measure
PR_BATCH = 10_000  # images per distance block in precision/recall


class PrecomputedFeatures(nn.Module):
    """Hands features already extracted to torchmetrics' FID and KID as if it extracted them."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics' FID instead of a trial pass

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def check_metrics(metrics: Iterable[str], option: str = "--metrics") -> tuple[str, ...]:
    """The metrics asked for, in ``METRICS`` order; an unknown one is refused in one line."""
    asked = list(metrics)
    unknown = [name for name in asked if name not in METRICS]
    if unknown or not asked:
        raise FacesError(f"{option}: {', '.join(unknown) or 'none given'}; choose from {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in asked)


def score_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    metrics: Iterable[str],
    *,
    real_pr: torch.Tensor | None = None,
    fake_pr: torch.Tensor | None = None,
    fake_logits: torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    neighbourhood: int = 3,
    is_splits: int = 10,
) -> dict[str, float]:
    """The metrics of generated images against real ones, from their features.

    ``real``, ``fake``: (N, D) features for FID and KID; ``real_pr``, ``fake_pr``: the features
    precision and recall use (default: the same); ``fake_logits``: (N, classes) for the
    Inception Score. Returns ``fid``, ``kid`` and ``kid_std``, ``precision``, ``recall``, ``is``
    and ``is_std``, as asked.
    """
    metrics = check_metrics(metrics)
    out: dict[str, float] = {}
    if "fid" in metrics:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1])).to(real.device)
        fid.update(real.double(), real=True)
        fid.update(fake.double(), real=False)
        out["fid"] = float(fid.compute())
    if "kid" in metrics:
        from torchmetrics.image.kid import KernelInceptionDistance

        subset = min(kid_subset_size, len(real), len(fake))
        with warnings.catch_warnings():  # it keeps every feature, and says so: a few thousand vectors
            warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all")
            kid = KernelInceptionDistance(
                feature=PrecomputedFeatures(real.shape[1]), subsets=kid_subsets, subset_size=subset
            ).to(real.device)
        kid.update(real.double(), real=True)
        kid.update(fake.double(), real=False)
        with torch.random.fork_rng():  # its subsets: the same draw every time, the caller's RNG untouched
            torch.manual_seed(0)
            mean, std = kid.compute()
        out["kid"], out["kid_std"] = float(mean), float(std)
    if "precision" in metrics or "recall" in metrics:
        from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

        real_pr = real if real_pr is None else real_pr
        fake_pr = fake if fake_pr is None else fake_pr
        if min(len(real_pr), len(fake_pr)) <= neighbourhood:
            raise FacesError(
                f"precision and recall need more than k = {neighbourhood} images from each source, "
                f"got {len(fake_pr)} generated and {len(real_pr)} real: score more images, or lower k"
            )
        # torch-fidelity's convention: the generated features first, the real second; beyond
        # PR_BATCH images its batched version (the full one holds three N x N distance matrices)
        large = max(len(fake_pr), len(real_pr)) > PR_BATCH
        compute = calculate_precision_recall_part if large else calculate_precision_recall_full
        precision, recall = compute(fake_pr.float(), real_pr.float(), neighbourhood, PR_BATCH)
        out.update({name: value for name, value in (("precision", precision), ("recall", recall)) if name in metrics})
    if "is" in metrics:
        from torch_fidelity.metric_isc import isc_features_to_metric

        if fake_logits is None:
            raise FacesError("the Inception Score needs Inception's logits of the generated images")
        splits = min(is_splits, len(fake_logits))
        scores = isc_features_to_metric(fake_logits, splits=splits)
        out["is"], out["is_std"] = scores["inception_score_mean"], scores["inception_score_std"]
    return out


def classifier_weights(inception: nn.Module) -> torch.Tensor:
    """Inception's classifier weights (``fc.weight``), refused in one line when they are all zeros
    (a features-only copy of the weights, such as the ones converted from NVIDIA's FID code)."""
    weight = inception.fc.weight.detach()
    if not bool(weight.abs().sum() > 0):
        raise FacesError(
            "the Inception Score needs Inception's classifier layer, and these weights have none (fc.* are "
            "zeros: a features-only copy): use the official file (`python -m lightning_faces download-weights` "
            "on a machine with internet), or leave is out of --metrics"
        )
    return weight


class FID(Periodic):
    """Computes FID every few epochs or steps and logs it as ``val/fid`` (and, with ``metrics``,
    KID, precision, recall and the Inception Score as ``val/kid``, ``val/precision``, ...).

    Generated images come from G (or its EMA) in eval mode, from ``num_samples`` fixed latents,
    so each evaluation scores the same latents; under DDP each rank scores its share of them and
    ``compute()`` sums the feature statistics over ranks: one FID over all samples.

    Args:
        every_n_epochs: epochs between evaluations (0: none at epoch ends).
        every_n_steps: iterations between evaluations (0: none mid-epoch); both 0 turns FID off.
        num_samples: generated images per evaluation (the literature quotes 50,000), and the
            most real images the statistics use.
        real_split: the split of real images to compare with (``train``, ``valid``, ...).
        batch_size: images per Inception forward pass.
        resize: how images are resized to Inception's 299x299: ``tensorflow`` (the original FID's
            bilinear resize, what published numbers use) or ``antialiased`` (torchmetrics' default
            since 1.8; it scores differently).
        feature_extractor_weights_path: the Inception weights file (``None``: torch-fidelity's
            default location, where ``python -m lightning_faces download-weights`` puts it).
        cache_dir: where real statistics are kept (``None``: ``~/.cache/lightning_faces/fid``).
        feature_extractor: another feature network instead of Inception (for tests).
        metrics: what to measure, ``fid`` always among them (the best checkpoint follows it):
            ``kid``, ``precision``, ``recall`` (on Inception's features; ``evaluate`` can use
            VGG16's as papers do) and ``is`` (needs the official Inception file). Beyond FID the
            real images' features are kept (cached as the statistics are) and each rank's
            generated features are gathered, so all ranks compute the same numbers.
        kid_subsets, kid_subset_size: KID's subsets (the size capped at the sample counts).
    """

    metric = "val/fid"

    def __init__(
        self,
        every_n_epochs: int = 1,
        every_n_steps: int = 0,
        num_samples: int = 10_000,
        real_split: str = "train",
        batch_size: int = 100,
        resize: str = "tensorflow",
        feature_extractor_weights_path: str | None = None,
        cache_dir: str | None = None,
        feature_extractor: nn.Module | None = None,
        metrics: list[str] | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
    ) -> None:
        if num_samples < 2:
            raise FacesError(f"FID needs at least 2 samples, got num_samples {num_samples}")
        if batch_size < 1:
            raise FacesError(f"fid.batch_size must be at least 1, got {batch_size}")
        if kid_subsets < 1 or kid_subset_size < 2:
            raise FacesError(
                f"fid.kid_subsets must be at least 1 and fid.kid_subset_size 2, got {kid_subsets}, {kid_subset_size}"
            )
        if resize not in RESIZES:
            raise FacesError(f"fid.resize must be one of {', '.join(RESIZES)}, got {resize!r}")
        self.metrics = check_metrics(metrics or ["fid"], option="fid.metrics")
        if "fid" not in self.metrics:
            raise FacesError(f"fid.metrics {list(self.metrics)} must include fid: the best checkpoint follows val/fid")
        self.extras = tuple(name for name in self.metrics if name != "fid")  # measured on kept features
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        super().__init__(every_n_epochs, every_n_steps)
        self.resize = resize
        self.num_samples, self.real_split, self.batch_size = num_samples, real_split, batch_size
        self.weights_path = feature_extractor_weights_path
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.feature_extractor = feature_extractor
        self.fid: nn.Module | None = None
        self.features: nn.Module | None = None  # with extras: the network, run here rather than in self.fid
        self.real_features: torch.Tensor | None = None  # with extras: every real image's, on the CPU
        self.weights_checked = False
        self.real_ready = False  # real statistics loaded or computed into self.fid
        self.last_cache_hit: bool | None = None
        self.protocol: dict[str, Any] = {}  # how the numbers are measured, filled in at the first evaluation
        self._fixed_latents: torch.Tensor | None = None
        self._fixed_attributes: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        """FID is off when both intervals are 0 (the quickstart: no weights to download)."""
        return bool(self.every_n_epochs or self.every_n_steps)

    def check(self) -> None:
        """Start-up check: the feature extractor can be built offline (Inception weights)."""
        if self.active and self.feature_extractor is None and not self.weights_checked:
            self.weights_path = check_inception_weights(self.weights_path)
            self.weights_checked = True  # the CLI checks before fit, setup() again without the CLI

    def best_checkpoint(self) -> ModelCheckpoint:
        """Keeps the checkpoint with the lowest ``val/fid``, saved right after each evaluation."""
        return ModelCheckpoint(
            monitor="val/fid",
            mode="min",
            filename="best-fid-{step:07d}",
            auto_insert_metric_name=False,
            save_top_k=1,
            every_n_train_steps=self.every_n_steps or None,
            every_n_epochs=None if self.every_n_steps else self.every_n_epochs,
            save_on_train_epoch_end=True,
        )

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.active and self.fid is None:
            self.check()
            self.fid = make_fid(self.weights_path, self.feature_extractor, self.resize)
            if self.extras:  # features extracted here, once, for FID and the other metrics alike
                from torchmetrics.image.fid import FrechetInceptionDistance

                self.features = self.fid.inception
                dims = int(self.fid.real_features_sum.shape[0])
                self.fid = FrechetInceptionDistance(feature=PrecomputedFeatures(dims), reset_real_features=False)
                if "is" in self.extras:
                    self._classifier()  # a features-only Inception stops the run now

    def _classifier(self) -> torch.Tensor:
        if self.feature_extractor is not None:
            raise FacesError("fid.metrics is needs Inception's classifier: not with fid.feature_extractor")
        assert self.features is not None
        return classifier_weights(getattr(self.features, "inception", self.features))

    def _update(self, images: torch.Tensor, real: bool) -> torch.Tensor | None:
        """Adds uint8 images to FID's sums; with extras, returns their features (B, D) too."""
        assert self.fid is not None
        if self.features is None:
            self.fid.update(images, real=real)
            return None
        features = self.features(images)
        self.fid.update(features, real=real)  # as the network gives them: FID as without extras, to the bit
        return features.double()

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> torch.Tensor | None:
        assert self.fid is not None, "FID.setup() runs before evaluate()"
        self.fid.to(module.device)
        if self.features is not None:
            self.features.to(module.device)
        if not self.real_ready:
            started = time.perf_counter()
            path = self._load_or_compute_real(trainer, module)
            how = "loaded from" if self.last_cache_hit else "computed and saved to"
            rank_zero_info(f"FID: real statistics {how} {path} in {time.perf_counter() - started:.1f} s")
            for logger in trainer.loggers:  # beside the numbers: how they are measured
                logger.log_hyperparams({"fid_protocol": describe_protocol(self.protocol)})
        started = time.perf_counter()
        self.fid.reset()  # drops the fakes, keeps the real statistics
        # sample i always comes from the same latent, whatever the number of ranks; rank r
        # scores samples r, r+W, r+2W, ...: all ranks together score each sample once
        latents, attributes = self._samples(module)
        mine = slice(trainer.global_rank, None, trainer.world_size)
        fakes = []
        for start in range(0, len(latents[mine]), self.batch_size):
            batch = slice(start, start + self.batch_size)
            labels = None if attributes is None else attributes[mine][batch]
            images = module.generate(latents[mine][batch], labels)  # (B, 3, S, S) in [-1, 1]
            fakes.append(self._update(to_uint8(images), real=False))
        value = self.fid.compute()  # sums the states over ranks: every rank gets the same value
        logged = {"val/fid": float(value)}
        if self.extras:
            logged.update(self._extras(trainer, _rows(fakes, self.fid, module.device)))
        logged["val/fid_seconds"] = time.perf_counter() - started
        # to the loggers once, at this iteration; self.log from a batch-end hook would be
        # re-sent at the next logging interval as if measured then
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
        module.log("val/fid", value, prog_bar=True, logger=False)  # for ModelCheckpoint and the bar
        note, generator = "", module.generator
        if getattr(module, "growth", None) is not None and (
            generator.resolution < module.image_size or float(generator.alpha) < 1
        ):  # progressive growing, not at the final resolution yet
            side, size = generator.resolution, module.image_size
            note = f"; {side}x{side} samples enlarged to {size}x{size}: not a final FID"
        others = "".join(
            f", {name.split('/')[1]} {number:.4g}" for name, number in logged.items() if name[4:] in self.extras
        )
        rank_zero_info(
            f"FID {float(value):.3f}{others} at iteration {trainer.global_step} "
            f"({describe_protocol(self.protocol)}{note})"
        )
        return value

    def _extras(self, trainer: L.Trainer, mine: torch.Tensor) -> dict[str, float]:
        """KID, precision, recall, IS of every rank's generated features against the real ones:
        scored on rank 0 (on the training device), the numbers then sent to every rank."""
        fake = gather_rows(trainer, mine)
        values = None
        if trainer.is_global_zero:
            assert self.real_features is not None
            real = self.real_features.to(fake.device)
            logits = fake.float() @ self._classifier().float().to(fake.device).T if "is" in self.extras else None
            subsets = {"kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size}
            scores = score_features(real, fake, self.extras, fake_logits=logits, **subsets)
            values = {f"val/{name}": float(number) for name, number in scores.items() if name in self.extras}
        return trainer.strategy.broadcast(values, src=0)

    def _samples(self, module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``num_samples`` latents every evaluation scores, drawn once (on the CPU), and for a
        conditional GAN their attributes: real rows from its pool, drawn once too."""
        if self._fixed_latents is None or self._fixed_latents.shape != (self.num_samples, module.latent_dim):
            seeded = torch.Generator().manual_seed(10_000)
            self._fixed_latents = torch.randn(self.num_samples, module.latent_dim, generator=seeded)
            rows = module.genes.attributes(self.num_samples, torch.Generator(module.device).manual_seed(10_001))
            self._fixed_attributes = None if rows is None else rows.cpu()
        return self._fixed_latents, self._fixed_attributes

    def _load_or_compute_real(self, trainer: L.Trainer, module: L.LightningModule) -> Path:
        assert self.fid is not None
        datamodule = trainer.datamodule
        dataset = datamodule.real_images(self.real_split)
        count = min(self.num_samples, len(dataset))
        data = datamodule.describe(self.real_split)
        key = {
            "data": data,
            "count": count,
            "sample": "random, seed 0",  # real_sample(); caches of the first N images are not reused
            "features": self._feature_identity(),
        }
        if self.extras:
            key["kept"] = "features"  # caches with the real features themselves, beside the sums
        self.protocol = {
            "generated": self.num_samples,
            "real": f"{count} of {len(dataset)} (split {self.real_split}, a seeded random sample)",
            "image size": data.get("image_size"),
            "crop": data.get("crop", "none"),
            "features": key["features"]["network"],
            "resize": self.resize if self.feature_extractor is None else "none (custom feature network)",
        }
        if self.extras:
            self.protocol["metrics"] = " ".join(self.metrics)
            if {"kid"} & set(self.extras):
                self.protocol["KID subsets"] = (
                    f"{self.kid_subsets} of {min(self.kid_subset_size, count, self.num_samples)}"
                )
            if {"precision", "recall"} & set(self.extras):
                self.protocol["precision/recall"] = "k 3, on the features above"

        key_text = json.dumps(key, sort_keys=True, default=str)
        path = self.cache_dir / f"real-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.pt"
        # rank 0 decides and tells the others, so that all ranks take the same branch below
        states = self._read_cache(path, key_text) if trainer.is_global_zero else None
        self.last_cache_hit = trainer.strategy.broadcast(states is not None, src=0)
        if not self.last_cache_hit:
            indices = real_sample(len(dataset), count)[trainer.global_rank :: trainer.world_size]
            loader = DataLoader(Subset(dataset, indices), batch_size=self.batch_size, num_workers=0)
            mine = update_from_loader(
                self._update, loader, real=True, device=module.device, show=trainer.is_global_zero
            )
            states = {
                name: trainer.strategy.reduce(getattr(self.fid, name).clone(), reduce_op="sum") for name in REAL_STATES
            }
            if self.extras:  # every rank's real features, on rank 0 (which scores them)
                states["features"] = gather_rows(trainer, _rows(mine, self.fid, module.device))
            if trainer.is_global_zero:
                with atomic_path(path) as tmp:
                    torch.save({"key": key_text, **{name: value.cpu() for name, value in states.items()}}, tmp)
        if self.extras and trainer.is_global_zero:
            self.real_features = states["features"].cpu()  # type: ignore[index]
        for name in REAL_STATES:
            # rank 0 holds the totals, the others zeros: the sum over ranks is the total once
            current = getattr(self.fid, name)
            value = states[name] if trainer.is_global_zero else torch.zeros_like(current)  # type: ignore[index]
            setattr(self.fid, name, value.to(dtype=current.dtype, device=module.device))
        self.real_ready = True
        return path

    @torch.no_grad()
    def _feature_identity(self) -> dict[str, object]:
        if self.feature_extractor is not None:
            params = list(self.feature_extractor.parameters())
            return {
                "network": type(self.feature_extractor).__qualname__,
                "shapes": [list(p.shape) for p in params],
                "checksum": float(sum(p.double().abs().sum() for p in params)),
            }
        file = Path(self.weights_path) if self.weights_path else default_weights_file()
        return {
            "network": "inception-v3-2015-12-05 (2048-d)",
            "dims": 2048,
            "weights_bytes": file.stat().st_size,
            "resize": self.resize,
        }

    @staticmethod
    def _read_cache(path: Path, key_text: str) -> dict[str, torch.Tensor] | None:
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # unreadable (e.g. truncated by a crash): compute afresh and overwrite
        if saved.get("key") != key_text:
            return None
        return {name: saved[name] for name in (*REAL_STATES, "features") if name in saved}
