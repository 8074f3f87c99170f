"""Commands beside training: ``fid A B``, ``download-weights``, and (``play.py``, ``app.py``)
``generate``, ``interpolate``, ``export`` and ``serve``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lightning_faces.console import program_name
from lightning_faces.data import CelebA, ImageFolder, to_uint8
from lightning_faces.errors import FacesError
from lightning_faces.metrics import (
    RESIZES,
    check_inception_weights,
    describe_protocol,
    download_weights,
    make_fid,
    real_sample,
)
from lightning_faces.parsing import TRAINING, Commands, ShortErrorParser, at_least

if TYPE_CHECKING:
    from lightning_faces.generator import FaceGenerator
    from lightning_faces.module import GAN


def command_tree() -> ShortErrorParser:
    """Every command in one parser tree: the training commands listed (their options are
    LightningCLI's, parsed by ``cli.make_cli``), the tools with their own arguments."""
    prog = program_name()
    parser = ShortErrorParser(prog=prog, description="Train GANs on faces, and play with what they learn.")
    commands = Commands(prog, parser.add_subcommands(required=True, dest="command"))
    for name, summary in TRAINING.items():
        commands.add_parser(name, help=summary)
    fid = commands.add_parser(
        "fid",
        help="FID between two image folders, CelebA folders or checkpoints (run: fid --help).",
        description="FID between two sources, each an image folder, a CelebA-layout folder (the one that holds "
        "celeba/) or a checkpoint (sampled), preprocessed as for training.",
    )
    fid.add_argument("source_a")
    fid.add_argument("source_b")
    add_source_options(fid)
    evaluate = commands.add_parser(
        "evaluate",
        help="FID, KID, precision/recall and IS of a generator or folder against real images (run: evaluate --help).",
        description="Scores FAKE (a checkpoint, an export folder or a folder of images) against REAL (an image "
        "folder or a CelebA-layout folder) with the metrics papers report; prints a table and, with --json, "
        "writes one, each number with the network, counts and settings it was measured with. A generator's "
        "images are the faces `generate` renders for seeds 0, 1, 2, ...",
    )
    evaluate.add_argument("fake", help="a training checkpoint, an export folder, or a folder of generated images")
    evaluate.add_argument("real", help="a folder of real images, or a CelebA-layout folder (the one holding celeba/)")
    add_source_options(evaluate)
    from lightning_faces import evaluate as evaluation

    evaluation.add_arguments(evaluate)
    download = commands.add_parser(
        "download-weights",
        help="Fetch FID's Inception weights, on a machine with internet (run: download-weights --help).",
    )
    download.add_argument("--output", default=None, help="where to save (default: where torchmetrics looks)")
    from lightning_faces import app, play

    play.add_arguments(commands)
    app.add_arguments(commands)
    return parser


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """How ``fid`` and ``evaluate`` read their sources: sizes, counts, crops, Inception's settings."""
    fid = parser
    fid.add_argument("--image-size", type=int, default=None, help="side in pixels (default: the checkpoint's, else 64)")
    fid.add_argument("--num-samples", type=at_least(2), default=10_000, help="images sampled from a generator")
    fid.add_argument(
        "--max-images",
        type=at_least(2),
        default=None,
        help="at most this many images of a folder (a seeded random sample)",
    )
    fid.add_argument("--split", default="all", help="CelebA split of a CelebA folder")
    fid.add_argument(
        "--crop", type=float, default=None, help="crop fraction (default 0.79 for CelebA, 1.0 for folders)"
    )
    fid.add_argument("--batch-size", type=at_least(1), default=100, help="images per Inception pass")
    fid.add_argument(
        "--resize",
        choices=sorted(RESIZES),
        default="tensorflow",
        help="how images reach Inception's 299x299: tensorflow is the original FID's (published numbers)",
    )
    fid.add_argument(
        "--generator",
        choices=("ema", "raw"),
        default="ema",
        help="for a checkpoint: its EMA generator when it has one (ema), or the trained weights (raw)",
    )
    fid.add_argument("--weights", default=None, help="Inception weights file (default: torch-fidelity's location)")
    fid.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run_tool(argv: list[str]) -> None:
    """Parses ``argv`` with the command tree (``--help``, or an unknown command, end here) and
    runs the tool it names."""
    config = command_tree().parse_args(argv)
    args = config[config.command]
    args.command = config.command
    if args.command in ("generate", "interpolate", "export"):
        from lightning_faces import play

        play.run(args)
        return
    if args.command == "serve":
        from lightning_faces import app

        app.run(args)
        return
    if args.command == "download-weights":
        path = download_weights(args.output)
        print(f"Inception weights at {path}")
        if args.output:
            print(f"set fid.feature_extractor_weights_path: {path} in your config")
        return
    if args.command == "evaluate":
        run_evaluate(args)
        return
    if args.command in TRAINING:  # reached only through command_tree() called directly
        raise FacesError(f"{args.command} is a training command: run it as {program_name()} {args.command} ...")
    score = compute_fid(args)
    print(f"FID {score:.3f}")


def compute_fid(args: argparse.Namespace) -> float:
    weights = check_inception_weights(args.weights, option="--weights")
    device = torch.device(args.device)
    # both sources are opened and checked before any Inception pass (minutes per 10,000 images)
    models = {source: _checkpoint_gan(source, device) for source in (args.source_a, args.source_b)}
    sizes = [model.image_size for model in models.values() if model is not None]
    image_size = args.image_size or (sizes[0] if sizes else 64)
    sources = [_source(name, models[name], image_size, args) for name in (args.source_a, args.source_b)]
    fid = make_fid(weights, resize=args.resize).to(device)
    counts = []
    for (name, batches, count), real in zip(sources, (True, False), strict=True):
        with tqdm(total=count, desc=f"Inception features of {name}", unit="img") as progress:
            for images in batches():
                fid.update(images.to(device), real=real)
                progress.update(images.shape[0])
        print(f"{'A' if real else 'B'}: {count} images from {name}")
        counts.append(count)
    protocol = {
        "A": counts[0],
        "B": counts[1],
        "image size": image_size,
        "crop": args.crop or "0.79 for CelebA folders, 1.0 for image folders",
        "features": "inception-v3-2015-12-05 (2048-d)",
        "resize": args.resize,
    }
    print(f"protocol: {describe_protocol(protocol)}")
    return float(fid.compute())


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate FAKE REAL``: the table, and the JSON with --json."""
    from lightning_faces import evaluate as evaluation
    from lightning_faces.play import check_output

    metrics = evaluation.check_metrics(args.metrics)
    if args.json:
        check_output(Path(args.json), "--json", "file", example="scores.json")  # before minutes of features
    weights = check_inception_weights(args.weights, option="--weights")
    device = torch.device(args.device)
    inception = evaluation.InceptionFeatures(weights, args.resize)
    if "is" in metrics:
        inception.classifier()  # a features-only Inception copy is refused now, not after the features
    vgg16_path = evaluation.find_vgg16(args.vgg16_weights) if {"precision", "recall"} & set(metrics) else None
    vgg16 = evaluation.VGG16Features(vgg16_path) if vgg16_path else None
    generator = _exported_or_checkpoint(args.fake, args.generator, device)
    image_size = args.image_size or (generator.image_size if generator is not None else 64)
    if generator is not None:
        if generator.image_size != image_size:
            raise FacesError(
                f"{args.fake} generates {generator.image_size}px images, not --image-size {image_size}: "
                "leave --image-size out to score at the generator's size"
            )
        fake = args.fake, lambda: _seeded_faces(generator, args.num_samples, args.batch_size), args.num_samples
    else:
        fake = _source(args.fake, None, image_size, args, what="evaluate")
    if Path(args.real).is_file() or _is_export(Path(args.real)):
        raise FacesError(f"REAL {args.real} must be a folder of real images (or a CelebA-layout folder)")
    real = _source(args.real, None, image_size, args, what="evaluate")
    settings = {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size, "neighbourhood": args.k}
    result = evaluation.evaluate(fake, real, metrics, inception, vgg16, device, **settings)
    protocol = {
        "fake": f"{args.fake} ({fake[2]} images{', seeds 0..' + str(fake[2] - 1) if generator is not None else ''})",
        "real": f"{args.real} ({real[2]} images{', split ' + args.split if _is_celeba(Path(args.real)) else ''})",
        "image size": image_size,
        "crop": args.crop or "0.79 for CelebA folders, 1.0 for image folders",
        "resize": f"{args.resize} (to 299 for Inception, 224 for VGG16)",
    }
    print(f"protocol: {describe_protocol(protocol)}")
    print(evaluation.table(result))
    payload = {"protocol": protocol, "metrics": result}
    if args.json:
        print(f"wrote {evaluation.write_json(args.json, payload)}")
    return payload


def _is_export(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _is_celeba(path: Path) -> bool:
    return (path / "celeba" / "list_attr_celeba.txt").exists()


def _exported_or_checkpoint(source: str, which: str, device: torch.device) -> FaceGenerator | None:
    """The generator ``source`` holds (a checkpoint file, or an export folder); None for an image folder."""
    from lightning_faces.generator import from_checkpoint, load_generator

    path = Path(source)
    if path.is_file():
        return from_checkpoint(path, ema=which == "ema").to(device)
    return load_generator(path, device) if _is_export(path) else None


def _seeded_faces(generator: FaceGenerator, count: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The faces ``generate`` renders for seeds 0 .. count-1, as uint8 batches."""
    for start in range(0, count, batch_size):
        yield generator.render_seeds(range(start, min(start + batch_size, count)))


def _checkpoint_gan(source: str, device: torch.device) -> GAN | None:
    """The GAN of ``source`` when it is a file (refused in one line unless a GAN checkpoint), else None."""
    if not Path(source).is_file():
        return None
    return load_gan(source, device)


def _source(
    source: str, model: GAN | None, image_size: int, args: argparse.Namespace, what: str = "FID"
) -> tuple[str, Callable[[], Iterator[torch.Tensor]], int]:
    """``(source, batches, count)``: a function yielding uint8 (B, 3, S, S) batches of a
    checkpoint's samples or a folder's images, and how many it yields, checked before use."""
    if model is not None:
        if model.image_size != image_size:
            raise FacesError(f"{source} generates {model.image_size}px images, not --image-size {image_size}")
        return source, lambda: _samples(model, args), args.num_samples
    path = Path(source)
    if not path.exists():
        raise FacesError(f"{source} does not exist: {what} takes a checkpoint file or a folder of images")
    dataset: Dataset
    if _is_celeba(path):
        dataset = CelebA(path, args.split, image_size, 0.79 if args.crop is None else args.crop)
    else:
        dataset = ImageFolder(path, image_size, 1.0 if args.crop is None else args.crop)
    if args.max_images is not None and args.max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, real_sample(len(dataset), args.max_images))
    if len(dataset) < 2:
        raise FacesError(
            f"{source} holds {len(dataset)} image{'s' * (len(dataset) != 1)}: {what} needs at least 2 from each "
            "source (thousands for a number worth comparing)"
        )

    def batches() -> Iterator[torch.Tensor]:
        for images, _ in DataLoader(dataset, batch_size=args.batch_size, num_workers=2):
            yield images

    return source, batches, len(dataset)


def _samples(model: GAN, args: argparse.Namespace) -> Iterator[torch.Tensor]:
    seeded = torch.Generator(device=model.device).manual_seed(0)
    for start in range(0, args.num_samples, args.batch_size):
        count = min(args.batch_size, args.num_samples - start)
        latents, attributes = model.genes.sample(count, seeded)
        yield to_uint8(model.generate(latents, attributes, ema=args.generator == "ema"))


def load_gan(path: str, device: torch.device) -> GAN:
    """The GAN of a checkpoint, read with the safe loader (one line for a damaged or unsafe file)."""
    from lightning_faces.module import GAN

    model = GAN.from_checkpoint(path, map_location=device)
    return model.to(device).eval()
