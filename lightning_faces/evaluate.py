"""``evaluate FAKE REAL``: the metrics GAN papers report, each number with how it was measured.

- **FID** and **KID** on Inception's pool features (torchmetrics' arithmetic; KID is unbiased,
  so it compares at small sample counts where FID cannot).
- **Precision** and **recall** (Kynkäänniemi et al. 2019): the share of generated images inside
  the real images' k-nearest-neighbour balls, and the converse (torch-fidelity's arithmetic). Papers
  use VGG16's fc2 features; their weights are a download (``--vgg16-weights``, or torchvision's
  file in torch's hub cache), so without them Inception's features stand in, and the result
  says which network gave each number.
- **Inception Score** (Salimans et al. 2016), for comparison with older work, on Inception's
  logits (torch-fidelity's arithmetic). It needs the official weights file, whose classifier
  layer the features-only copies lack.

Each source's features are extracted once (one pass per network); ``metrics.score_features``
turns features into every metric, as it does for training's ``fid.metrics``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lightning_faces.errors import FacesError
from lightning_faces.files import atomic_path
from lightning_faces.metrics import METRICS, check_metrics, classifier_weights, make_fid, score_features
from lightning_faces.parsing import at_least

DEFAULT_METRICS = ("fid", "kid", "precision", "recall")
INCEPTION = "inception-v3-2015-12-05 pool3 (2048-d)"
VGG16 = "vgg16 fc2 after ReLU (4096-d, torchvision's ImageNet weights)"
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's weights, where torch's hub cache keeps them
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"


class InceptionFeatures(nn.Module):
    """FID's Inception as evaluation uses it: uint8 images -> pool features (B, 2048), and the
    classifier's logits from them (``logits``), as torch-fidelity's ``logits_unbiased``."""

    def __init__(self, weights_path: str | None, resize: str = "tensorflow") -> None:
        super().__init__()
        self.network = make_fid(weights_path, resize=resize).inception
        self.name = INCEPTION

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def classifier(self) -> torch.Tensor:
        """The 1008-way classifier's weights (1008, 2048); refuses a features-only copy (zeros)."""
        return classifier_weights(getattr(self.network, "inception", self.network))


class VGG16Features(nn.Module):
    """VGG16's fc2 features after ReLU (4096-d), as torch-fidelity computes them for precision and
    recall: resized to 224 as TensorFlow 1 did, ImageNet-normalised. Weights: torchvision's file,
    read without unpickling code."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        import torchvision

        from lightning_faces.checkpoint import load_checkpoint

        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FacesError(
                f"--vgg16-weights {path} is not a file: download {VGG16_URL} on a machine with internet, "
                "or leave --vgg16-weights out (precision and recall then use Inception's features)"
            )
        network = torchvision.models.vgg16()
        state = load_checkpoint(path, role="--vgg16-weights", advice=f"use torchvision's {VGG16_FILE}")
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise FacesError(f"--vgg16-weights {path} is not torchvision's VGG16 state dict ({error})") from error
        network.classifier = network.classifier[:4]  # fc1, ReLU, dropout (off in eval), fc2
        self.network = network.eval().requires_grad_(False)
        self.name = VGG16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(224, 224), align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1) * 255
        return torch.relu(self.network((x - mean) / std))


def find_vgg16(path: str | None) -> str | None:
    """The VGG16 weights precision and recall use: ``path`` when given, else torchvision's file in
    torch's hub cache when it is there; None: none (Inception's features stand in)."""
    if path is not None:
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    return str(cached) if cached.is_file() else None


def extract(
    batches: Iterable[torch.Tensor], networks: list[nn.Module], device: torch.device, what: str, total: int
) -> list[torch.Tensor]:
    """Each network's features (N, D) of uint8 image batches, in one pass over the images."""
    out: list[list[torch.Tensor]] = [[] for _ in networks]
    with torch.no_grad(), tqdm(total=total, desc=f"features of {what}", unit="img", leave=False) as progress:
        for images in batches:
            images = images.to(device)
            for features, network in zip(out, networks, strict=True):
                features.append(network(images).double().cpu())
            progress.update(len(images))
    return [torch.cat(features) for features in out]


def evaluate(
    fake: tuple[str, Callable[[], Iterator[torch.Tensor]], int],
    real: tuple[str, Callable[[], Iterator[torch.Tensor]], int],
    metrics: Iterable[str],
    inception: nn.Module,
    vgg16: nn.Module | None = None,
    device: torch.device | str = "cpu",
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """Scores ``fake`` against ``real`` (each ``(name, batches, count)``: a function yielding uint8
    (B, 3, S, S) batches, and how many images it yields). ``inception``: the FID/KID network
    (``InceptionFeatures``, or another for tests); ``vgg16``: precision/recall's, None for
    Inception's. ``settings`` go to ``score_features``. Returns ``{metric: {"value", ...}}`` with
    each metric's network and counts beside it."""
    metrics = check_metrics(metrics)
    device = torch.device(device)
    networks = [inception.to(device).eval()]
    pr_network = vgg16 if vgg16 is not None and {"precision", "recall"} & set(metrics) else None
    if pr_network is not None:
        networks.append(pr_network.to(device).eval())
    features = {}
    for side, (name, batches, count) in (("fake", fake), ("real", real)):
        if side == "real" and metrics == ("is",):
            break  # the Inception Score looks at the generated images only
        features[side] = extract(batches(), networks, device, name, count)
    logits = None
    if "is" in metrics:
        logits = features["fake"][0].float() @ inception.classifier().float().cpu().T
    real_features = features.get("real", [features["fake"][0]])
    values = score_features(
        real_features[0],
        features["fake"][0],
        [m for m in metrics if m != "is" or logits is not None],
        real_pr=real_features[1] if pr_network is not None else None,
        fake_pr=features["fake"][1] if pr_network is not None else None,
        fake_logits=logits,
        **settings,
    )
    counts = {"generated": fake[2], "real": real[2] if metrics != ("is",) else 0}
    inception_name = getattr(inception, "name", type(inception).__qualname__)
    pr_name = getattr(pr_network, "name", inception_name) if pr_network is not None else inception_name
    k = settings.get("neighbourhood", 3)
    result: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        entry: dict[str, Any] = {"value": values[metric], **counts}
        if metric in ("fid", "kid"):
            entry["features"] = inception_name
        if metric == "kid":
            entry["std"] = values["kid_std"]
            entry["subsets"] = settings.get("kid_subsets", 100)
            entry["subset size"] = min(settings.get("kid_subset_size", 1000), counts["generated"], counts["real"])
        if metric in ("precision", "recall"):
            entry["features"], entry["k"] = pr_name, k
            if pr_network is None:
                entry["note"] = "papers use VGG16 fc2; Inception's features stand in (no --vgg16-weights)"
        if metric == "is":
            entry["features"] = "inception-v3-2015-12-05 logits (1008 classes)"
            entry["std"], entry["splits"] = values["is_std"], min(settings.get("is_splits", 10), counts["generated"])
            entry.pop("real")
        result[metric] = entry
    return result


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Writes ``payload`` as indented JSON, atomically (its folder made if missing)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=1) + "\n")
    return path


def table(result: dict[str, dict[str, Any]]) -> str:
    """The printed table: a metric a row, its value and how it was measured."""
    names = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "is": "IS"}
    lines = ["| metric | value | measured on |", "| --- | --- | --- |"]
    for metric, entry in result.items():
        value = f"{entry['value']:.4g}" + (f" +- {entry['std']:.2g}" if "std" in entry else "")
        how = [entry["features"], f"{entry['generated']} generated"]
        if "real" in entry:
            how.append(f"{entry['real']} real")
        how += [f"{key} {entry[key]}" for key in ("k", "subsets", "subset size", "splits") if key in entry]
        lines.append(f"| {names[metric]} | {value} | {', '.join(how)} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``evaluate``'s options beside the ones it shares with ``fid`` (sources and preprocessing)."""
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help=f"any of {', '.join(METRICS)}")
    parser.add_argument(
        "--vgg16-weights",
        default=None,
        help=f"torchvision's {VGG16_FILE} for precision/recall as papers compute them (default: that file in "
        "torch's hub cache if present, else Inception's features)",
    )
    parser.add_argument("--k", type=at_least(1), default=3, help="precision/recall's neighbourhood size")
    parser.add_argument("--kid-subsets", type=at_least(1), default=100)
    parser.add_argument("--kid-subset-size", type=at_least(2), default=1000)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
