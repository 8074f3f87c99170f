"""A trained generator as one ONNX file, for runtimes without PyTorch (``export --format onnx``).

The file takes ``latents`` (B, latent_dim) float32 and, for a conditional model, ``attributes``
(B, A) in [0, 1], with B free; it gives ``images`` (B, 3, S, S) in [-1, 1] (no truncation). Its
metadata says what a caller needs: ``latent_dim``, ``image_size``, ``attributes`` (comma-separated)
and where the weights came from. The generator is G's average when the checkpoint keeps one.

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("faces.onnx")
    latent_dim = int(session.get_modelmeta().custom_metadata_map["latent_dim"])
    z = np.random.default_rng(0).standard_normal((4, latent_dim), dtype=np.float32)
    images = session.run(None, {"latents": z})[0]  # (4, 3, S, S) in [-1, 1]

A growing generator (ProGAN's) is written at its current resolution and fade. It is written by
PyTorch's exporter (``torch.onnx.export``, which needs ``onnx`` and
``onnxscript``: ``pip install "lightning-faces[onnx]"``). A layer the exporter cannot take is
named in one line.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_faces.errors import FacesError
from lightning_faces.files import atomic_path
from lightning_faces.growth import enlarge

if TYPE_CHECKING:
    from lightning_faces.generator import FaceGenerator

OPSET = 18
INSTALL = 'pip install "lightning-faces[onnx]" (onnx, onnxscript; onnxruntime to run the file)'


class Rendering(nn.Module):
    """What the ONNX file computes: latents [and attributes] -> images at the generator's size."""

    def __init__(self, generator: FaceGenerator) -> None:
        super().__init__()
        self.network, self.image_size = generator.network, generator.image_size
        for name in ("level", "alpha"):  # a growing G: its phase as constants (torch.export cannot branch on buffers)
            value = getattr(self.network, name, None)
            if isinstance(value, torch.Tensor):
                delattr(self.network, name)
                setattr(self.network, name, value.item())

    def forward(self, latents: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        return enlarge(self.network(latents, attributes), self.image_size)


def export_onnx(generator: FaceGenerator, out: str | Path) -> Path:
    """Writes ``generator`` as the ONNX file ``out`` (atomically; an existing file is refused)."""
    out = Path(out)
    if out.exists():
        raise FacesError(f"{out} exists: choose a new file (nothing was overwritten)")
    try:
        import onnx  # noqa: F401  (the exporter's own dependencies, checked before any work)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise FacesError(f"ONNX export needs {error.name}: {INSTALL}") from error
    rendering = Rendering(copy.deepcopy(generator).cpu().float().eval()).eval()  # the caller's stays put
    example = example_inputs(generator, batch=2)
    program = _export(rendering, example)
    program.model.metadata_props.update(metadata(generator))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        program.save(tmp)
    return out


def example_inputs(generator: FaceGenerator, batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the file's shapes: latents, and attributes for a conditional generator."""
    latents = torch.randn(batch, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    if not generator.attributes:
        return (latents,)
    return latents, torch.rand(batch, len(generator.attributes), generator=torch.Generator().manual_seed(1))


def _export(rendering: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.onnx.ONNXProgram:
    names = ["latents", "attributes"][: len(example)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's progress notes and deprecation chatter
            return torch.onnx.export(
                rendering,
                example,
                dynamo=True,
                input_names=names,
                output_names=["images"],
                dynamic_shapes={name: {0: batch} for name in ("latents", "attributes")[: len(example)]},
                opset_version=OPSET,
                verbose=False,
            )
    except Exception as error:  # the exporter's errors are long and many-typed: name the layer
        raise FacesError(_what_failed(rendering, example, error)) from error


def _what_failed(rendering: nn.Module, example: tuple[torch.Tensor, ...], error: Exception) -> str:
    """One line naming the first layer (in forward order) that does not export on its own."""
    seen: list[tuple[str, nn.Module, tuple]] = []
    hooks = [
        module.register_forward_hook(lambda m, inputs, output, name=name: seen.append((name, m, inputs)))
        for name, module in rendering.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad():
            rendering(*example)
    except Exception:  # noqa: BLE001 - the network fails in PyTorch too: the first error says why
        pass
    finally:
        for hook in hooks:
            hook.remove()
    reason = _first_line(error)
    for name, module, inputs in seen:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, tuple(inputs), dynamo=True, opset_version=OPSET, verbose=False)
        except Exception as layer_error:  # noqa: BLE001
            layer = name.removeprefix("network.")
            return (
                f"ONNX export failed at layer {layer} ({type(module).__name__}): {_first_line(layer_error)}; "
                "the safetensors export (export without --format) keeps every layer"
            )
    return f"ONNX export failed: {reason}; the safetensors export (export without --format) keeps every layer"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def metadata(generator: FaceGenerator) -> dict[str, str]:
    """What a caller of the file needs to know, as ONNX metadata (strings)."""
    return {
        "latent_dim": str(generator.latent_dim),
        "image_size": str(generator.image_size),
        "attributes": ",".join(generator.attributes),
        "output_range": "-1,1",
        "ema": str(generator.ema).lower(),
        "source": generator.source,
        "producer": "lightning_faces",
    }
