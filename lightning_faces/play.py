"""``generate``, ``interpolate`` and ``export``: a trained generator's faces as files.

Every command takes a training checkpoint (``.ckpt``, read without unpickling) or an export
folder (``export``'s output) or a Hub repo id; see ``generator.py`` for how seeds, attributes
and truncation are defined.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from lightning_faces.data.attributes import parse_attribute_values
from lightning_faces.errors import FacesError
from lightning_faces.files import atomic_path
from lightning_faces.generator import FaceGenerator, load_generator
from lightning_faces.parsing import Commands, at_least, named

MAX_IMAGES = 10_000  # per generate command
MAX_FRAMES = 2_000  # per interpolate command
MAX_SEED = 2**63 - 1  # seeds are 64-bit signed integers on every platform torch runs on


def as_image(image: torch.Tensor) -> Image.Image:
    """uint8 (3, H, W) -> a PIL image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Writes uint8 (3, H, W) as a PNG, atomically."""
    with atomic_path(path) as tmp:
        as_image(image).save(tmp, format="PNG")
    return path


def _truncation(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (1: none, 0: the average face), got {value}")
    return value


truncation = named(_truncation, "psi")  # an argument type: psi in [0, 1]


def check_output(path: Path, option: str, kind: str, example: str = "walk.gif") -> Path:
    """Refuses, in one line and before any work, an output path that cannot become a ``kind``
    ("folder" or "file"): one that exists as the other kind, or one under a file."""
    if kind == "folder" and path.exists() and not path.is_dir():
        raise FacesError(f"{option} {path} is a file, but a folder is written there: choose a folder (new or existing)")
    if kind == "file" and path.is_dir():
        raise FacesError(f"{option} {path} is a folder: give the file to write, e.g. {path / example}")
    above = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise FacesError(f"{option} {path} is under {above}, which is a file, not a folder: choose another path")
    return path


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1] ({MAX_SEED}), got {value}")
    return value


seed = named(_seed, "seed")  # an argument type: a seed in [0, MAX_SEED]


def add_source(parser: argparse.ArgumentParser) -> None:
    """The generator to load and where to run it: what generate, interpolate and serve share."""
    parser.add_argument(
        "generator", help="a training checkpoint (.ckpt), an export folder, or a Hugging Face Hub repo id"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_arguments(commands: Commands) -> None:
    """The ``generate``, ``interpolate`` and ``export`` subcommands."""
    generate = commands.add_parser(
        "generate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Render faces of a checkpoint or export from seeds, as PNGs or a grid (run: generate --help).",
        description="Renders faces seed, seed+1, ... as PNG files (or one grid). A seed always gives the same "
        "latent (drawn on the CPU), so the same face. Truncation pulls each face toward the average face "
        "(psi 1: none, 0: the average; see lightning_faces.generator).",
    )
    add_source(generate)
    generate.add_argument("--num", type=at_least(1), default=16, help=f"faces to render (at most {MAX_IMAGES})")
    generate.add_argument("--seed", type=seed, default=0, help="the first face's seed, in [0, 2**63 - 1]")
    generate.add_argument("--grid", action="store_true", help="one grid.png instead of one PNG per face")
    generate.add_argument(
        "--truncation",
        type=truncation,
        default=None,
        help="psi in [0, 1]: 1 none, 0 the average face; 0.7 is usual (default: 1, or a --character's own)",
    )
    generate.add_argument(
        "--attributes",
        default=None,
        help="a conditional model's attribute values, NAME=V with V in [0, 1], e.g. Eyeglasses=1,Male=0; "
        "the others come with each seed (real rows of the training data)",
    )
    generate.add_argument(
        "--character",
        default=None,
        help="render one character from the page instead of seeds: a file holding its genes (the page's Copy "
        "genes), drawn seed or mix; written as OUT/<seed or mixed>-psi<truncation>.png, the page's download",
    )
    generate.add_argument(
        "--classifier",
        default=None,
        help="with --character of an unconditional model: the classifier serve was given, for named sliders",
    )
    generate.add_argument("--out", default="generated", help="output folder")

    walk = commands.add_parser(
        "interpolate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="A latent walk between seeds as a GIF (run: interpolate --help).",
        description="A GIF that walks from each seed's face to the next (and back to the first), along great "
        "circles of the latent space (spherical interpolation: Gaussian latents keep their typical length).",
    )
    add_source(walk)
    walk.add_argument(
        "--seeds", type=seed, nargs="+", required=True, help="two or more seeds in [0, 2**63 - 1], in order"
    )
    walk.add_argument("--frames", type=at_least(2), default=60, help="frames from one seed to the next")
    walk.add_argument("--truncation", type=truncation, default=1.0, help="psi in [0, 1] (as for generate)")
    walk.add_argument("--attributes", default=None, help="fixed attribute values (else each seed's, blended)")
    walk.add_argument("--frame-ms", type=at_least(10), default=40, help="milliseconds per frame")
    walk.add_argument("--scale", type=at_least(1), default=2, help="enlarge frames this many times (nearest)")
    walk.add_argument("--out", default="walk.gif", help="the GIF to write")

    export = commands.add_parser(
        "export",
        help="Write a checkpoint's generator as safetensors + config.json (run: export --help).",
        description="Writes OUT/config.json, OUT/model.safetensors and OUT/README.md (huggingface_hub's "
        "PyTorchModelHubMixin layout; push it with `hf upload`). Load it with "
        "lightning_faces.load_generator(OUT): no Lightning, nothing unpickled.",
    )
    export.add_argument("checkpoint", help="a training checkpoint (.ckpt)")
    export.add_argument("out", help="a new (or empty) folder; with --format onnx, a new .onnx file")
    export.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="safetensors: the folder above; onnx: one file for onnxruntime (latents [, attributes] -> images, "
        "any batch; needs the onnx extra)",
    )


def run(args: argparse.Namespace) -> None:
    if args.command == "export":
        if not Path(args.checkpoint).is_file():
            raise FacesError(f"{args.checkpoint} is not a file: export takes a training checkpoint (.ckpt)")
        from lightning_faces.generator import export, from_checkpoint

        if args.format == "onnx":
            from lightning_faces.onnx import export_onnx

            check_output(Path(args.out), "export OUT:", "file", example="faces.onnx")
            generator = from_checkpoint(args.checkpoint)
            print(f"exported to {export_onnx(generator, args.out)}: {generator.describe()}")
            return
        check_output(Path(args.out), "export OUT:", "folder")
        out = export(args.checkpoint, args.out)
        print(f"exported to {out}: {load_generator(out).describe()}")
    elif args.command == "generate":
        for path in generate(args):
            print(path)
    else:
        print(interpolate(args))


def _generator(args: argparse.Namespace) -> FaceGenerator:
    return load_generator(args.generator, device=args.device)


def generate(args: argparse.Namespace) -> list[Path]:
    if args.character:
        return [render_character(args)]
    if args.num > MAX_IMAGES:
        raise FacesError(f"--num {args.num} is more than {MAX_IMAGES} faces per command: run it in parts with --seed")
    if args.seed + args.num - 1 > MAX_SEED:
        raise FacesError(f"--seed {args.seed} with --num {args.num} goes past the largest seed, 2**63 - 1 ({MAX_SEED})")
    out = check_output(Path(args.out), "--out", "folder")
    generator = _generator(args)
    values = parse_attribute_values(args.attributes, generator.attributes, fractions=True)
    seeds = list(range(args.seed, args.seed + args.num))
    psi = 1.0 if args.truncation is None else args.truncation
    images = generator.render_seeds(seeds, values, psi)  # G runs in batches of MAX_BATCH
    if args.grid:
        grid = make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2, pad_value=255)
        return [save_png(grid, out / "grid.png")]
    return [save_png(image, out / f"seed{seed:06d}.png") for seed, image in zip(seeds, images, strict=True)]


def render_character(args: argparse.Namespace) -> Path:
    """``generate --character FILE``: the page's face from its genes, the pixels of its download."""
    from lightning_faces.character import EDIT_RANGE, Character, render

    path = Path(args.character)
    if args.attributes or args.grid:
        raise FacesError("--attributes and --grid do not apply with --character: it renders the face its genes hold")
    if not path.is_file():
        raise FacesError(f"--character {path} is not a file: save the page's genes (Copy genes) into one")
    out = check_output(Path(args.out), "--out", "folder")
    generator = _generator(args)
    directions = {}
    if not generator.attributes:
        from lightning_faces.directions import slider_directions

        directions = slider_directions(generator, args.classifier)
    names = list(generator.attributes) or list(directions)
    span = (0.0, 1.0) if generator.attributes else (-EDIT_RANGE, EDIT_RANGE)
    hint = "" if generator.attributes or args.classifier else "; a page's named sliders need its --classifier here"
    character = Character.from_genes(path.read_text(), generator.latent_dim, names, span, f"--character {path}", hint)
    if args.truncation is not None:
        character = character.at(args.truncation)
    return save_png(render(generator, character, directions), out / f"{character.file_stem()}.png")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1); linear when they are parallel."""
    cosine = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)


def interpolate(args: argparse.Namespace) -> Path:
    if len(args.seeds) < 2:
        raise FacesError("--seeds needs at least two seeds to walk between")
    if len(args.seeds) * args.frames > MAX_FRAMES:
        raise FacesError(f"{len(args.seeds)} seeds x {args.frames} frames is more than {MAX_FRAMES} frames")
    out = check_output(Path(args.out), "--out", "file")
    generator = _generator(args)
    values = parse_attribute_values(args.attributes, generator.attributes, fractions=True)
    latents = [generator.seed_latent(seed) for seed in args.seeds]
    rows = [generator.seed_attributes(seed) for seed in args.seeds]
    if generator.attributes:
        rows = [generator.with_values(row, values) for row in rows]
    elif values:
        raise FacesError("this generator is unconditional: it takes no attribute values")
    frames_z, frames_y = [], []
    for index in range(len(latents)):  # the last segment closes the loop
        following = (index + 1) % len(latents)
        for frame in range(args.frames):
            t = frame / args.frames
            frames_z.append(slerp(latents[index], latents[following], t))
            if generator.attributes:
                frames_y.append((1 - t) * rows[index] + t * rows[following])
    z = torch.stack(frames_z)
    y = torch.stack(frames_y) if frames_y else None
    images = generator.render(z, y, args.truncation)
    size = generator.image_size * args.scale
    pictures = [as_image(image).resize((size, size), Image.Resampling.NEAREST) for image in images]
    with atomic_path(out) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=args.frame_ms, loop=0)
    return out


__all__ = ["as_image", "generate", "interpolate", "save_png", "slerp"]
