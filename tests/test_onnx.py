"""``export --format onnx``: the generator as one ONNX file, checked against PyTorch with onnxruntime (issue 27)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lightning_faces.cli import main
from lightning_faces.errors import FacesError
from lightning_faces.generator import from_checkpoint
from lightning_faces.onnx import export_onnx
from tests.conftest import PLAY_ATTRIBUTES

# largest pixel difference between onnxruntime and PyTorch, images in [-1, 1]: float32 rounding
TOLERANCE = 1e-4


@pytest.mark.parametrize("kind", ["plain", "conditional"])
def test_the_onnx_file_renders_what_pytorch_does_at_any_batch(checkpoints, tmp_path, capsys, kind):
    out = tmp_path / "faces.onnx"
    main(["export", str(checkpoints[kind]), str(out), "--format", "onnx"])
    assert f"exported to {out}" in capsys.readouterr().out
    generator = from_checkpoint(checkpoints[kind])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert int(meta["latent_dim"]) == generator.latent_dim and int(meta["image_size"]) == generator.image_size
    assert meta["attributes"] == (",".join(PLAY_ATTRIBUTES) if kind == "conditional" else "")
    assert [i.name for i in session.get_inputs()] == (
        ["latents", "attributes"] if kind == "conditional" else ["latents"]
    )
    for batch in (1, 5, 33):  # the batch is free
        latents = torch.randn(batch, generator.latent_dim, generator=torch.Generator().manual_seed(batch))
        feeds = {"latents": latents.numpy()}
        attributes = None
        if kind == "conditional":
            attributes = torch.rand(batch, len(PLAY_ATTRIBUTES), generator=torch.Generator().manual_seed(7))
            feeds["attributes"] = attributes.numpy()
        (images,) = session.run(None, feeds)
        expected = generator(latents, attributes).numpy()
        assert images.shape == expected.shape == (batch, 3, generator.image_size, generator.image_size)
        assert np.abs(images - expected).max() < TOLERANCE


def test_an_existing_file_is_not_overwritten(checkpoints, tmp_path):
    out = tmp_path / "faces.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(FacesError, match="exists: choose a new file"):
        export_onnx(from_checkpoint(checkpoints["plain"]), out)
    assert out.read_bytes() == b"mine"


class DecidesOnData(torch.nn.Module):
    """A layer whose forward branches on its input's values: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.mean() > 0 else -x


def test_a_layer_that_does_not_export_is_named(checkpoints, tmp_path):
    generator = from_checkpoint(checkpoints["plain"])
    last = [name for name, module in generator.network.named_modules() if not list(module.children())][-1]
    parent, _, child = last.rpartition(".")
    setattr(generator.network.get_submodule(parent) if parent else generator.network, child, DecidesOnData())
    with pytest.raises(FacesError) as error:
        export_onnx(generator, tmp_path / "faces.onnx")
    message = str(error.value)
    assert message.startswith(f"ONNX export failed at layer {last} (DecidesOnData): ") and "\n" not in message
    assert not (tmp_path / "faces.onnx").exists()


NETWORKS = {
    "R3GAN": {"width": 8, "blocks": 1, "expansion": 1, "group_size": 8},
    "ResNet": {"width": 8},
    "Progressive": {"width": 8, "max_channels": 16},
}


@pytest.mark.parametrize(("family", "settings"), NETWORKS.items(), ids=NETWORKS.keys())
def test_every_network_family_exports(tmp_path, family, settings):
    from lightning_faces.generator import FaceGenerator

    torch.manual_seed(0)
    spec = {
        "class_path": f"lightning_faces.nets.{family}Generator",
        "init_args": {"latent_dim": 8, "image_size": 16, **settings},
    }
    generator = FaceGenerator(spec).eval()
    out = export_onnx(generator, tmp_path / f"{family}.onnx")
    latents = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    (images,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"latents": latents.numpy()}
    )
    assert np.abs(images - generator(latents).numpy()).max() < TOLERANCE
