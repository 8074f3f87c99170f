"""generate, interpolate, export and load_generator, through the real entry point; the page's logic."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lightning_faces import FaceGenerator, FacesError, load_generator
from lightning_faces.app import Studio
from lightning_faces.character import Character
from lightning_faces.cli import main
from lightning_faces.data import to_uint8
from lightning_faces.directions import latent_directions, slider_directions
from lightning_faces.generator import AVERAGE_SAMPLES_PER_ROW, AVERAGE_SEED
from lightning_faces.growth import enlarge
from lightning_faces.module import GAN
from lightning_faces.play import slerp
from tests.conftest import PLAY_ATTRIBUTES as ATTRIBUTES
from tests.conftest import PLAY_TINY, run_cli


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1)


def tool(args: list[str], cwd: Path) -> int:
    """Runs a tool command in this process, from ``cwd``; returns its exit status. (A fresh
    process costs seconds of imports; the first test below still goes through one.)"""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        main(args)
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        os.chdir(before)
    return 0


def test_generate_gives_the_same_face_for_a_seed_whatever_the_batch(checkpoints, tmp_path):
    ckpt = checkpoints["conditional"]
    first = run_cli(["generate", str(ckpt), "--num", "3", "--seed", "5", "--out", "a"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]  # through `python -m lightning_faces`
    assert tool(["generate", str(ckpt), "--num", "1", "--seed", "6", "--out", "b"], tmp_path) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["seed000005.png", "seed000006.png", "seed000007.png"]
    assert np.array_equal(pixels(tmp_path / "a" / "seed000006.png"), pixels(tmp_path / "b" / "seed000006.png"))
    assert pixels(tmp_path / "a" / "seed000006.png").shape == (16, 16, 3)
    assert not np.array_equal(pixels(tmp_path / "a" / "seed000005.png"), pixels(tmp_path / "a" / "seed000006.png"))
    assert tool(["generate", str(ckpt), "--num", "4", "--grid", "--out", "g"], tmp_path) == 0
    assert Image.open(tmp_path / "g" / "grid.png").size == (2 * 18 + 2, 2 * 18 + 2)


def test_generate_applies_truncation_and_attributes_as_documented(checkpoints, tmp_path):
    ckpt = checkpoints["conditional"]
    args = ["generate", str(ckpt), "--seed", "3", "--num", "1", "--truncation", "0.5", "--attributes", "Blond_Hair=1"]
    assert tool([*args, "--out", "t"], tmp_path) == 0
    generator = load_generator(ckpt)
    row = generator.seed_attributes(3)
    row[ATTRIBUTES.index("Blond_Hair")], row[ATTRIBUTES.index("Black_Hair")] = 1.0, 0.0  # exclusive hair colours
    # the documented definition, by hand: G's first block's features pulled halfway toward their
    # mean over the fixed draw of latents, for this attribute row
    net = generator.network
    fixed = torch.Generator().manual_seed(AVERAGE_SEED)
    draw = torch.randn(AVERAGE_SAMPLES_PER_ROW, generator.latent_dim, generator=fixed)
    with torch.no_grad():
        average = net.stem(draw, row.expand(len(draw), -1)).mean(0)
        features = net.stem(generator.seed_latent(3)[None], row[None])
        expected = to_uint8(net.synthesize(average + 0.5 * (features - average)))[0]
    assert (chw(pixels(tmp_path / "t" / "seed000003.png")).int() - expected.int()).abs().max() <= 1  # float order
    untruncated = generator.render(generator.seed_latent(3)[None], row[None])[0]
    assert not torch.equal(expected, untruncated)


@pytest.mark.parametrize("kind", ["plain", "conditional"])
def test_truncation_pulls_every_face_toward_one_average_face(checkpoints, kind):
    generator = load_generator(checkpoints[kind])
    seeds = list(range(16))
    latents = torch.stack([generator.seed_latent(seed) for seed in seeds])
    rows = torch.stack([generator.seed_attributes(0)] * len(seeds)) if kind == "conditional" else None
    faces = {psi: generator.render(latents, rows, psi).float() for psi in (1.0, 0.7, 0.4, 0.1, 0.0)}
    with torch.no_grad():
        assert torch.equal(faces[1.0], to_uint8(generator.network(latents, rows)).float())  # psi 1: untouched
        origin = to_uint8(generator.network(torch.zeros_like(latents[:1]), None if rows is None else rows[:1]))
    spread = {psi: images.std(0).mean().item() for psi, images in faces.items()}
    assert spread[1.0] > spread[0.7] > spread[0.4] > spread[0.1] > spread[0.0] == 0.0, spread  # one average face
    assert not torch.equal(faces[0.0][:1], origin.float())  # the average face is not the face of z = 0
    if kind == "conditional":  # each attribute row has its own average face
        other = rows.clone()
        other[:, ATTRIBUTES.index("Eyeglasses")] = 1 - other[:, ATTRIBUTES.index("Eyeglasses")]
        assert not torch.equal(generator.render(latents[:1], other[:1], 0.0), faces[0.0][:1].byte())


@pytest.mark.parametrize("kind", ["conditional", "plain"])
def test_predict_and_generate_write_the_same_pixels_for_the_same_seeds(checkpoints, tmp_path, kind):
    # one path from a seed to a face (generator.seed_genes): predict's image i is generate's seed i
    ckpt = checkpoints[kind]
    asked = ["--attributes", "Eyeglasses=1"] if kind == "conditional" else []
    assert tool(["generate", str(ckpt), "--num", "5", *asked, "--out", "generated"], tmp_path) == 0
    attributes = ["--data.attributes", f"[{', '.join(ATTRIBUTES)}]"] if kind == "conditional" else []
    predict_asked = ["--data.predict_attributes", "Eyeglasses=1"] if kind == "conditional" else []
    args = ["predict", *PLAY_TINY, *attributes, *predict_asked, "--ckpt_path", str(ckpt)]
    args += ["--data.predict_samples", "5", "--data.batch_size", "2", "--trainer.logger", "false"]
    args += [
        "--trainer.callbacks",
        "lightning_faces.callbacks.ImageWriter",
        "--trainer.callbacks.output_dir",
        "predicted",
    ]
    assert tool(args, tmp_path) == 0
    for seed in range(5):
        predicted = pixels(tmp_path / "predicted" / f"{seed:06d}.png")
        assert np.array_equal(predicted, pixels(tmp_path / "generated" / f"seed{seed:06d}.png")), seed
    assert not np.array_equal(
        pixels(tmp_path / "predicted" / "000000.png"), pixels(tmp_path / "predicted" / "000001.png")
    )


def test_generate_refuses_bad_requests_in_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["generate", str(checkpoints["conditional"]), "--attributes", "Smiling=1"], "its attributes are Black_Hair"),
        (["generate", str(checkpoints["conditional"]), "--attributes", "Eyeglasses=2"], "V in [0, 1]"),
        (["generate", str(checkpoints["plain"]), "--attributes", "Eyeglasses=1"], "none: it is unconditional"),
        (["generate", str(checkpoints["plain"]), "--truncation", "1.5"], "must be in [0, 1]"),
        (["generate", str(tmp_path / "missing.ckpt")], "does not exist"),
        (["interpolate", str(checkpoints["plain"]), "--seeds", "4"], "at least two seeds"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            main([*args, "--out", "x"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and message in lines[-1] and lines[-1].startswith("error:"), lines
    assert not (tmp_path / "x").exists()


def test_interpolate_writes_a_looping_walk_through_the_seeds(checkpoints, tmp_path):
    walk = ["interpolate", str(checkpoints["plain"]), "--seeds", "1", "2", "3", "--frames", "4", "--scale", "1"]
    assert tool([*walk, "--out", "walk.gif"], tmp_path) == 0
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames == 12 and gif.size == (16, 16)
    assert tool(["generate", str(checkpoints["plain"]), "--seed", "2", "--num", "1", "--out", "s"], tmp_path) == 0
    gif.seek(4)  # frame 4 is seed 2 exactly (GIF colours are quantized: close, not equal)
    frame = np.asarray(gif.convert("RGB")).astype(int)
    face = pixels(tmp_path / "s" / "seed000002.png").astype(int)
    gif.seek(2)
    between = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(frame - face).mean() < np.abs(between - face).mean()


def test_slerp_keeps_the_ends_and_the_length_of_gaussian_latents():
    a, b = torch.randn(512, generator=torch.Generator().manual_seed(0)), torch.randn(512)
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    assert abs(middle.norm() - (a.norm() + b.norm()) / 2) < 0.05 * a.norm()  # a straight line would shrink it
    assert ((a + b) / 2).norm() < 0.8 * middle.norm()


def test_export_writes_safetensors_and_config_that_load_without_lightning(checkpoints, tmp_path, capsys):
    ckpt = checkpoints["conditional"]
    assert tool(["export", str(ckpt), "exported"], tmp_path) == 0
    out = tmp_path / "exported"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert all(p.stat().st_mode & 0o044 for p in [out, *out.iterdir()])  # readable by others, as files usually are
    config = json.loads((out / "config.json").read_text())
    assert config["network"]["class_path"] == "lightning_faces.nets.DCGANGenerator"
    assert (config["latent_dim"], config["image_size"], config["attributes"]) == (8, 16, ATTRIBUTES)
    assert config["output_range"] == [-1.0, 1.0] and config["ema"] is True
    tensors = load_file(out / "model.safetensors")  # plain tensors, nothing to unpickle
    assert tensors["attribute_pool"].shape[1] == 3
    exported, original = load_generator(out), load_generator(ckpt)
    assert torch.equal(exported.render_seeds([0, 1, 2]), original.render_seeds([0, 1, 2]))
    # the EMA's weights (with their own batch-norm statistics), as training samples them
    gan = GAN.from_checkpoint(ckpt)
    latents, rows = (
        torch.stack([exported.seed_latent(s) for s in (0, 1)]),
        torch.stack([exported.seed_attributes(s) for s in (0, 1)]),
    )
    assert torch.allclose(exported(latents, rows), gan.generate(latents, rows), atol=1e-6)
    capsys.readouterr()
    assert tool(["export", str(ckpt), "exported"], tmp_path) == 2 and "is not empty" in capsys.readouterr().err


def test_load_generator_refuses_foreign_code_and_damaged_files_in_one_line(checkpoints, tmp_path):
    out = tmp_path / "exported"
    assert tool(["export", str(checkpoints["plain"]), str(out)], tmp_path) == 0
    config = json.loads((out / "config.json").read_text())
    config["network"]["class_path"] = "os.system"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(FacesError, match="os.system is not a lightning_faces network"):
        load_generator(out)
    config["network"]["class_path"] = "lightning_faces.nets.DCGANGenerator"
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FacesError, match="is not a usable generator"):
        load_generator(out)
    with pytest.raises(FacesError, match="is not an exported generator"):
        load_generator(tmp_path)
    with pytest.raises(FacesError, match="does not exist"):
        load_generator(tmp_path / "nothing.ckpt")
    with pytest.raises(FacesError, match="is a text file, not a PyTorch checkpoint"):
        load_generator(out / "README.md")


def test_a_hub_repo_id_that_cannot_be_fetched_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: as a machine without internet
    with pytest.raises(FacesError, match="someone/faces is not a local file or folder, and loading it as a Hugging"):
        load_generator("someone/faces")


def test_mixing_takes_each_gene_from_one_parent(checkpoints):
    studio = Studio(load_generator(checkpoints["conditional"]))
    a, b = studio.from_seed(1), studio.from_seed(2)
    a = studio.with_control(a, "Eyeglasses", 1.0)
    b = studio.with_control(b, "Eyeglasses", 0.0)
    child = studio.mix(a, b, random.Random(0))
    assert all(x in (y, z) for x, y, z in zip(child.latent, a.latent, b.latent, strict=True))
    assert all(child.controls[n] in (a.controls[n], b.controls[n]) for n in ATTRIBUTES)
    from_a = sum(x == y for x, y in zip(child.latent, a.latent, strict=True))
    assert 0 < from_a < len(a.latent)  # both parents gave genes: not a copy
    assert child.seed is None and child.parents == ("seed 1", "seed 2")
    genes = [*child.latent, *child.controls.values()]
    parents = [
        (x, y) for x, y in zip([*a.latent, *a.controls.values()], [*b.latent, *b.controls.values()], strict=True)
    ]
    assert len(child.origin) == len(genes)  # and origin names the parent each gene came from
    assert all(
        gene == pair[0 if who == "A" else 1] for gene, pair, who in zip(genes, parents, child.origin, strict=True)
    )
    # never a copy of a parent, whatever the coin flips (8 genes: 1 in 128 would be, unchecked)
    for seed in range(500):
        latent = studio.mix(a, b, random.Random(seed)).latent
        assert latent not in (a.latent, b.latent), seed


def test_the_page_clamps_what_the_browser_sends_and_renders_like_generate(checkpoints):
    generator = load_generator(checkpoints["conditional"])
    studio = Studio(generator)
    character = studio.from_seed(7)
    assert studio.with_control(character, "Eyeglasses", 7).controls["Eyeglasses"] == 1.0
    assert studio.with_control(character, "Eyeglasses", float("nan")).controls == character.controls
    assert studio.with_control(character, "../../etc/passwd", 1).controls == character.controls
    assert studio.from_seed(-5).seed == 0 and studio.from_seed(2**40).seed == 2**31 - 1
    assert studio.seed_problem(7) is None and studio.seed_problem(2**31 - 1) is None
    for wrong in (-5, 99999999999, 1.5, None, "x"):
        assert "type a whole number from 0 to 2147483647" in studio.seed_problem(wrong)
    edited = studio.with_control(character, "Eyeglasses", 1.0)
    assert torch.equal(studio.render(edited.at(0.7)), generator.render_seeds([7], {"Eyeglasses": 1.0}, 0.7)[0])
    assert torch.equal(studio.render(edited.at(99)), studio.render(edited.at(1.0)))  # truncation clamped to 1
    assert edited.at(0.7).file_stem() == "seed000007-psi0.70"
    saved = Path(studio.save_png(studio.render(edited), "face"))
    assert saved.parent.parent == studio.downloads and saved.name == "face.png"


class ColourJudge(torch.nn.Module):
    """A stand-in attribute classifier: "Red", "Green", "Blue" are a face's mean channel values,
    centred on their medians over a calibration batch (so half of the faces have each)."""

    attribute_names = ("Red", "Green", "Blue")

    def __init__(self, faces: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", faces.mean(dim=(2, 3)).median(dim=0).values)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 100 * (images.mean(dim=(2, 3)) - self.centre)


def test_unconditional_models_get_sliders_that_move_what_the_classifier_sees(checkpoints):
    generator = load_generator(checkpoints["plain"])
    judge = ColourJudge(generator(torch.randn(400, 8, generator=torch.Generator().manual_seed(1))))
    directions = latent_directions(generator, judge, count=400)
    assert set(directions) == {"Red", "Green", "Blue"}
    assert all(abs(float(d.norm()) - 1) < 1e-5 and d.shape == (8,) for d in directions.values())
    studio = Studio(generator, directions)
    assert studio.names == ["Red", "Green", "Blue"]
    for column, name in enumerate(studio.names):
        raised = 0
        for seed in range(20):
            character = studio.from_seed(seed)
            assert set(character.controls.values()) == {0.0}
            low, high = (studio.render(studio.with_control(character, name, v)) for v in (-3.0, 3.0))
            seen = judge(torch.stack([low, high]).float() / 127.5 - 1)[:, column]
            raised += int(seen[1] > seen[0])
        assert raised >= 17, f"the {name} slider at +3 made faces more {name} than at -3 for only {raised} of 20"
    assert studio.with_control(studio.from_seed(0), "Blue", -9).controls["Blue"] == -3.0


def test_unconditional_models_get_principal_sliders_without_a_classifier(checkpoints):
    generator = load_generator(checkpoints["plain"])
    directions = slider_directions(generator)
    assert list(directions) == [f"direction {k}" for k in range(1, 7)]
    assert all(abs(float(d.norm()) - 1) < 1e-5 for d in directions.values())
    again = slider_directions(load_generator(checkpoints["plain"]))  # the same sliders every time
    assert all(torch.equal(directions[name], again[name]) for name in directions)
    # each moves the face, the first ones most, and no two move it the same way
    studio = Studio(generator, directions)
    start = studio.from_seed(3)
    moves = {}
    for name in studio.names:
        low, high = (studio.render(studio.with_control(start, name, v)).float() for v in (-2.0, 2.0))
        moves[name] = (high - low).flatten()
    size = {name: float(move.abs().mean()) for name, move in moves.items()}
    assert min(size.values()) > 1.0, size  # grey levels of 255, on average over the face
    assert size["direction 1"] > size["direction 6"], size
    for i, a in enumerate(studio.names[:3]):
        for b in studio.names[i + 1 : 3]:
            cosine = torch.nn.functional.cosine_similarity(moves[a], moves[b], dim=0)
            assert abs(float(cosine)) < 0.9, (a, b, float(cosine))
    strip = studio.direction_strip("direction 1")
    assert strip.shape == (3, generator.image_size, 5 * generator.image_size)


def test_genes_strip_shows_values_and_after_a_mix_the_parents(checkpoints):
    studio = Studio(load_generator(checkpoints["conditional"]))
    a, b = studio.from_seed(1), studio.from_seed(2)
    genes = len(a.latent) + len(a.controls)
    strip = studio.genes_strip(a)
    assert strip.dtype == torch.uint8 and strip.shape[2] == genes * 6
    cells = strip[:, 0, ::6].T  # one colour per gene
    assert all(c[0] == c[1] == c[2] for c in cells)  # grey
    latent = torch.tensor(a.latent)
    greys = cells[: len(latent), 0][latent.argsort()].int()
    assert (greys.diff() >= 0).all() and greys[-1] - greys[0] > 100  # lighter for larger, across the range
    child = studio.mix(a, b, random.Random(0))
    cells = studio.genes_strip(child)[:, 0, ::6].T
    colours = {"A": (37, 99, 235), "B": (234, 88, 12)}
    assert [tuple(c.tolist()) for c in cells] == [colours[who] for who in child.origin]


@pytest.mark.parametrize("kind", ["conditional", "plain"])
def test_generate_renders_a_page_character_from_its_genes(checkpoints, tmp_path, kind):
    generator = load_generator(checkpoints[kind])
    directions = {} if kind == "conditional" else slider_directions(generator)
    studio = Studio(generator, directions)
    a = studio.with_control(studio.from_seed(4, 0.6), studio.names[1], 1.0)
    child = studio.mix(a, studio.from_seed(5), random.Random(1), ("#1", "#2")).at(0.8)
    for character in (a, child):
        genes = tmp_path / f"{character.file_stem()}.json"
        genes.write_text(character.genes())
        assert Character.from_genes(genes.read_text(), generator.latent_dim, studio.names) == character
        assert tool(["generate", str(checkpoints[kind]), "--character", str(genes), "--out", "made"], tmp_path) == 0
        written = tmp_path / "made" / f"{character.file_stem()}.png"
        assert torch.equal(chw(pixels(written)), studio.render(character))  # the page's download, pixel for pixel
    assert child.file_stem() == "mixed-psi0.80" and a.file_stem() == "seed000004-psi0.60"
    assert len(child.genes()) < 30 * (len(child.latent) + len(child.controls)) + 200  # short decimals


def test_generate_refuses_genes_that_are_not_a_character_in_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = json.loads(Studio(load_generator(checkpoints["conditional"])).from_seed(1).genes())
    cases = {
        "not json": ("{latent", "is not JSON"),
        "no latent": (json.dumps({"seed": 1}), "has no latent"),
        "short latent": (
            json.dumps({**good, "latent": [0.0, 1.0]}),
            "has a latent of 2 numbers; this generator takes 8",
        ),
        "unknown control": (json.dumps({**good, "controls": {"Wings": 1}}), "sets Wings, not among the generator's"),
        "control out of range": (json.dumps({**good, "controls": {"Eyeglasses": 50}}), "Eyeglasses outside [0, 1]"),
        "huge latent": (json.dumps({**good, "latent": [1e300] * 8}), "every latent entry must be a finite number"),
        "text in latent": (json.dumps({**good, "latent": ["a"] * 8}), "every latent entry must be a finite number"),
        "bad psi": (json.dumps({**good, "truncation": 3}), "truncation must be a number in [0, 1]"),
        "bad seed": (json.dumps({**good, "seed": True}), "seed must be a whole number from 0"),
        "bad parents": (json.dumps({**good, "parents": 5}), "parents must be a list of labels"),
        "bad origin": (json.dumps({**good, "parents": ["#1", "#2"], "origin": "AB"}), "origin must be one letter"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / "genes.json").write_text(text)
        with pytest.raises(SystemExit) as stop:
            main(["generate", str(checkpoints["conditional"]), "--character", "genes.json", "--out", "x"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and message in lines[-1], (name, lines)
    assert not any((tmp_path / "x").glob("*.png"))


def whole(net: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The network's forward pass written out in one piece, as before the stem/synthesize split."""
    from lightning_faces.nets.progressive import _lrelu, pixel_norm

    name = type(net).__name__
    if name == "DCGANGenerator":
        return net.net(z.view(len(z), -1, 1, 1))
    if name == "ResNetGenerator":
        h = net.blocks(net.project(z).view(len(z), net.first_channels, 4, 4))
        return torch.tanh(net.to_rgb(torch.relu(net.norm(h))))
    if name == "R3GANGenerator":
        return net.to_rgb(net.stages(net.basis * net.coefficients(z)[:, :, None, None]))
    x = pixel_norm(_lrelu(net.first(pixel_norm(z)).view(len(z), -1, 4, 4)))  # progressive, grown in full
    x = pixel_norm(_lrelu(net.first_conv(x)))
    assert float(net.alpha) == 1.0
    for block in net.blocks[: int(net.level)]:
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        for conv in block:
            x = pixel_norm(_lrelu(conv(x)))
    return net.to_rgb[int(net.level)](x)


@pytest.mark.parametrize("network", ["DCGANGenerator", "ResNetGenerator", "R3GANGenerator", "ProgressiveGenerator"])
def test_every_generator_truncates_toward_its_average_face(network):
    # every network of the package splits into stem and synthesize, so truncation works for all
    spec = {"class_path": f"lightning_faces.nets.{network}", "init_args": {"image_size": 16, "width": 8}}
    generator = FaceGenerator(spec).eval()
    latents = torch.randn(6, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net = generator.network
        torch.testing.assert_close(net.synthesize(net.stem(latents)), whole(net, latents))  # the split loses nothing
        torch.testing.assert_close(generator(latents, None, 1.0), enlarge(whole(net, latents), 16))  # psi 1: untouched
        average = generator(latents, None, 0.0)
        half = generator(latents, None, 0.5)
    assert torch.equal(average, average[:1].expand_as(average))  # psi 0: one face for every latent
    assert not torch.equal(half, average) and float(half.std(0).mean()) > 0
