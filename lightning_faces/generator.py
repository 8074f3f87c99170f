"""A trained generator on its own: seeds to faces, export to safetensors, load without Lightning.

``FaceGenerator`` wraps one of this package's generator networks with what rendering needs
beside the weights: the latent size, the image size, the attribute names and a pool of real
attribute rows (to draw a conditional model's attributes from the data's joint distribution).
It uses huggingface_hub's ``PyTorchModelHubMixin``, so ``export`` writes the ecosystem's layout
(``config.json`` + ``model.safetensors`` + a model card) and ``load_generator`` reads it back,
from a folder or a Hub repo id, without unpickling anything: the config is JSON, the weights
are safetensors, and the network class must be one of this package's.

Conventions shared by ``generate``, ``interpolate`` and ``serve``:

- **Seeds.** Face ``seed`` has the latent ``torch.randn(latent_dim)`` drawn by a CPU generator
  seeded with ``seed``; a conditional model's attributes for it are then a row of the pool
  drawn by the same generator. ``generate --seed 5 --num 3`` renders seeds 5, 6, 7.
- **Truncation** pulls a face toward the average face, psi in [0, 1]: 1 leaves it alone, 0
  gives the average itself. It works at the end of G's first block (``stem``), where
  StyleGAN's idea has an average to pull toward: features f become ``mean + psi * (f - mean)``,
  the mean taken over a fixed draw of latents (per attribute row for a conditional model).
  Shrinking z itself (``psi * z``) would pull toward the face of z = 0 (the DCGAN, ResNet and
  R3GAN nets start with a layer linear in z), far inside the shell where N(0, I) latents lie,
  which G never saw: brown fog (docs/benchmarks.md, "Truncation").
- **Output.** Images are in [-1, 1]; ``to_uint8`` turns them into bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.growth import enlarge
from lightning_faces.sampling import seed_genes, with_values

NETWORKS = "lightning_faces.nets."
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "user/name"
MAX_BATCH = 256  # images rendered per forward pass
AVERAGE_SEED = 2**31 - 1  # the fixed draw of latents the average face is taken over
AVERAGE_SAMPLES = 2048  # latents averaged for an unconditional model's average face
AVERAGE_SAMPLES_PER_ROW = 256  # ... and for each attribute row of a conditional one
MAX_AVERAGES = 1024  # attribute rows whose average face is kept
MODEL_CARD = """---
{{ card_data }}
---

A face generator trained with lightning_faces: {{ description }}.

```python
from lightning_faces import load_generator

generator = load_generator("THIS_FOLDER_OR_REPO_ID")  # config.json + model.safetensors, nothing unpickled
faces = generator.render_seeds([0, 1, 2], truncation=0.8)  # uint8 (3, 3, S, S)
```

Or `python -m lightning_faces generate THIS_FOLDER --num 16 --grid --out faces/`.
"""


def _network(spec: dict[str, Any]) -> nn.Module:
    """Builds ``{"class_path", "init_args"}`` when it names one of this package's networks."""
    class_path = str(spec.get("class_path", ""))
    if not class_path.startswith(NETWORKS):
        raise FacesError(f"{class_path or 'no class_path'} is not a lightning_faces network: refusing to build it")
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise FacesError(f"{class_path} is not a network class of lightning_faces.nets")
    return cls(**dict(spec.get("init_args") or {}))


class FaceGenerator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lightning_faces",
    tags=["gan", "faces", "lightning_faces"],
    model_card_template=MODEL_CARD,
):
    """A generator network plus what it takes to render faces from seeds.

    Args:
        network: the generator as ``{"class_path": "lightning_faces.nets...", "init_args": {...}}``.
        attributes: the attribute names G is conditioned on, in its input order (empty:
            unconditional).
        pool_size: rows in the attribute pool (filled by the weights file).
        latent_dim, image_size: the network's, written for readers of config.json (checked).
        output_range: the images' value range (the networks end in tanh).
        ema: whether the weights are G's exponential moving average (informative).
        source: where the weights came from (informative).
    """

    def __init__(
        self,
        network: dict[str, Any],
        attributes: list[str] | None = None,
        pool_size: int = 0,
        latent_dim: int | None = None,
        image_size: int | None = None,
        output_range: tuple[float, float] = (-1.0, 1.0),
        ema: bool = False,
        source: str = "",
    ) -> None:
        super().__init__()
        self.network = _network(network)
        for name, value in (("latent_dim", latent_dim), ("image_size", image_size)):
            if value is not None and value != getattr(self.network, name):
                raise FacesError(f"config.json says {name} {value}, its network has {getattr(self.network, name)}")
        if tuple(output_range) != (-1.0, 1.0):
            raise FacesError(f"output_range {list(output_range)} is not supported: this package's networks end in tanh")
        self.output_range = (-1.0, 1.0)
        self.attributes = list(attributes or [])
        if list(getattr(self.network, "attributes", [])) != self.attributes:
            raise FacesError(
                f"the network is conditioned on {getattr(self.network, 'attributes', [])}, the config says "
                f"{self.attributes}: the export is inconsistent"
            )
        if self.attributes and pool_size < 1:
            raise FacesError("a conditional generator needs a pool of attribute rows (pool_size >= 1)")
        self.register_buffer("attribute_pool", torch.zeros(pool_size, len(self.attributes)))
        self.ema, self.source = ema, source
        # the average face's features once computed, by attribute row (None: unconditional); the
        # weights of a FaceGenerator are loaded once (load_state_dict clears them)
        self._averages: dict[tuple[float, ...] | None, torch.Tensor] = {}

    @property
    def latent_dim(self) -> int:
        return int(self.network.latent_dim)

    @property
    def image_size(self) -> int:
        return int(self.network.image_size)

    @property
    def device(self) -> torch.device:
        return self.attribute_pool.device

    def describe(self) -> str:
        kind = f"conditioned on {len(self.attributes)} attributes" if self.attributes else "unconditional"
        return (
            f"{type(self.network).__name__}, {self.image_size}px, latent {self.latent_dim}, {kind}"
            f"{', EMA weights' if self.ema else ''}"
        )

    # seeds -> genes
    def seed_latent(self, seed: int) -> torch.Tensor:
        """Face ``seed``'s latent, (latent_dim,) on the CPU (the same on every machine)."""
        return seed_genes([seed], self.latent_dim, self.attributes, self.attribute_pool)[0][0]

    def seed_attributes(self, seed: int) -> torch.Tensor | None:
        """Face ``seed``'s attribute row (A,) in {0, 1}, drawn from the pool; None when unconditional."""
        attributes = seed_genes([seed], self.latent_dim, self.attributes, self.attribute_pool)[1]
        return None if attributes is None else attributes[0]

    def with_values(self, row: torch.Tensor, values: dict[str, float]) -> torch.Tensor:
        """``row`` (A,) with ``values`` set (see ``with_values``)."""
        return with_values(row[None], self.attributes, values)[0]

    # genes -> images
    @torch.no_grad()
    def forward(
        self, latents: torch.Tensor, attributes: torch.Tensor | None = None, truncation: float = 1.0
    ) -> torch.Tensor:
        """Latents (B, latent_dim) [and attributes (B, A) in [0, 1]] -> images (B, 3, S, S) in [-1, 1],
        each pulled toward the average face by ``truncation`` (psi: 1 none, 0 the average)."""
        check_truncation(truncation)
        if self.attributes and attributes is None:
            raise FacesError(f"this generator is conditioned on {', '.join(self.attributes)}: pass their values")
        images = []
        for start in range(0, len(latents), MAX_BATCH):
            z = latents[start : start + MAX_BATCH].to(self.device, torch.float32)
            labels = None if not self.attributes else attributes[start : start + MAX_BATCH].to(self.device).float()
            features = self.network.stem(z, labels)
            if truncation < 1.0:
                features = torch.lerp(self.average_features(labels), features, truncation)
            image = self.network.synthesize(features)
            images.append(enlarge(image, self.image_size))  # a run stopped mid-growth: enlarged
        return torch.cat(images)

    @torch.no_grad()
    def average_features(self, attributes: torch.Tensor | None = None) -> torch.Tensor:
        """The average face's features: G's ``stem`` averaged over a fixed draw of latents, (1, ...)
        for an unconditional model (computed once), (B, ...) for attribute rows (B, A)."""
        draw = torch.Generator().manual_seed(AVERAGE_SEED)
        if not self.attributes:
            if None not in self._averages:
                z = torch.randn(AVERAGE_SAMPLES, self.latent_dim, generator=draw).to(self.device)
                total = sum(self.network.stem(part).double().sum(0) for part in z.split(MAX_BATCH))
                self._averages[None] = (total / AVERAGE_SAMPLES).float()[None]
            return self._averages[None].to(self.device)
        z = torch.randn(AVERAGE_SAMPLES_PER_ROW, self.latent_dim, generator=draw).to(self.device)
        rows, index = torch.unique(attributes.float(), dim=0, return_inverse=True)
        if len(self._averages) + len(rows) > MAX_AVERAGES:
            self._averages.clear()  # bounded memory when a long generate meets many rows
        for row in rows:  # the page renders a few rows again and again: each is averaged once
            key = tuple(row.tolist())
            if key not in self._averages:
                self._averages[key] = self.network.stem(z, row.expand(len(z), -1)).mean(0)
        return torch.stack([self._averages[tuple(row.tolist())].to(self.device) for row in rows])[index]

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._averages.clear()  # new weights, new average faces
        return super().load_state_dict(*args, **kwargs)

    def render(
        self, latents: torch.Tensor, attributes: torch.Tensor | None = None, truncation: float = 1.0
    ) -> torch.Tensor:
        """As ``forward``; returns uint8 (B, 3, S, S) on the CPU."""
        from lightning_faces.data import to_uint8

        return to_uint8(self(latents, attributes, truncation)).cpu()

    def render_seeds(
        self, seeds: Sequence[int], values: dict[str, float] | None = None, truncation: float = 1.0
    ) -> torch.Tensor:
        """The faces of ``seeds`` as uint8 (B, 3, S, S); ``values`` override attributes (conditional)."""
        latents, attributes = seed_genes(seeds, self.latent_dim, self.attributes, self.attribute_pool, values)
        return self.render(latents, attributes, truncation)


def check_truncation(truncation: float) -> float:
    """Refuses a psi outside [0, 1] in one line."""
    if not 0.0 <= truncation <= 1.0:
        raise FacesError(f"truncation must be in [0, 1] (1: none, 0: the average face; 0.7 is usual), got {truncation}")
    return truncation


def from_checkpoint(path: str | Path, ema: bool = True) -> FaceGenerator:
    """The generator of a training checkpoint (its EMA when it has one and ``ema``), read safely."""
    from lightning_faces.checkpoint import gan_settings, load_checkpoint
    from lightning_faces.module import GAN

    checkpoint = load_checkpoint(path)
    model = GAN.from_checkpoint(path, checkpoint=checkpoint)
    network = model.sampler(ema)  # G's average (with its own batch-norm statistics) when there is one
    use_ema = network is not model.generator
    spec = dict(gan_settings(checkpoint, path)["generator"])
    spec["init_args"] = {**(spec.get("init_args") or {}), "image_size": model.image_size}
    spec["init_args"]["attributes"] = list(model.attribute_names)
    pool = model.genes.attribute_pool if model.attribute_names else torch.zeros(0, 0)
    generator = FaceGenerator(
        spec,
        list(model.attribute_names),
        len(pool),
        latent_dim=model.latent_dim,
        image_size=model.image_size,
        ema=use_ema,
        source=Path(path).name,
    )
    generator.network.load_state_dict(network.state_dict())
    if len(pool):
        generator.attribute_pool.copy_(pool)
    return generator.eval()


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> FaceGenerator:
    """A ``FaceGenerator`` from an export folder (``export``'s output), a Hub repo id, or a
    training checkpoint (``.ckpt``); nothing is unpickled. Errors are one line."""
    text = str(path)
    local = Path(text).expanduser()
    try:
        if local.is_file():
            generator = from_checkpoint(local)  # anything else is named as what it is (load_checkpoint)
        elif local.is_dir():
            if not (local / "config.json").is_file() or not (local / "model.safetensors").is_file():
                raise FacesError(
                    f"{local} is not an exported generator (it needs config.json and model.safetensors): "
                    "make one with `python -m lightning_faces export CKPT OUT`"
                )
            with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints where it loads from
                generator = FaceGenerator.from_pretrained(local, strict=True)
        elif HUB_ID.fullmatch(text) and not text.endswith((".ckpt", ".pt", ".pth")):
            try:  # a Hub repo id, "user/name" (downloaded once into huggingface_hub's cache)
                generator = FaceGenerator.from_pretrained(text, strict=True)
            except Exception as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise FacesError(
                    f"{text} is not a local file or folder, and loading it as a Hugging Face Hub repo id failed "
                    f"({message})"
                ) from error
        else:
            raise FacesError(f"{text} does not exist (expected a checkpoint file, an exported folder or a Hub repo id)")
    except FacesError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FacesError(f"{text} is not a usable generator ({message})") from error
    if not isinstance(generator, FaceGenerator):  # pragma: no cover - from_pretrained returns cls
        raise FacesError(f"{text} did not load as a generator")
    return generator.to(device).eval()


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Writes the checkpoint's generator (EMA when present) to ``out``: config.json,
    model.safetensors and README.md, written beside and renamed into place as a whole."""
    import shutil
    import tempfile

    generator = from_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FacesError(f"{out} exists and is not empty: choose a new folder (nothing was overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        generator.save_pretrained(staging, model_card_kwargs={"description": generator.describe()})
        umask = os.umask(0)
        os.umask(umask)
        for file in staging.iterdir():  # mkdtemp and the writers make them private; make them ordinary
            file.chmod(0o666 & ~umask)
        staging.chmod(0o777 & ~umask)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
