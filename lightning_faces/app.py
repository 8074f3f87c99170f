"""``serve``: a local web page to play with a trained generator (Gradio, the ``app`` extra).

One character on screen at a time: Randomize draws a new seed, the seed box shows any seed's
face, sliders move its controls, the truncation slider shrinks its latent toward the mean.
Save keeps it in a gallery (click one to bring it back); Mix makes a child of two saved
characters where each gene (each latent entry and each control value) is copied from one
parent or the other at random, never averaged. Download PNG gives the face at the generator's
own size, the same pixels ``generate`` writes for the same seed, attributes and truncation.

Controls are a conditional model's attributes (0 to 1), or, for an unconditional model given an
attribute classifier, offsets along latent directions found with it (``control.latent_directions``).

Safety: binds 127.0.0.1 unless ``--host`` says otherwise (with a warning); values from the
browser are clamped and never used as file names; at most ``MAX_SAVED`` characters are kept;
weights are loaded without unpickling. Offline: no fonts, scripts or analytics are fetched
(system fonts in the theme, analytics off, no share link, server-side rendering off).
"""

# no `from __future__ import annotations`: Gradio reads the event handlers' annotations
# (gr.SelectData) at run time, and a string annotation hides the event from it
import argparse
import errno
import json
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_faces.errors import FacesError
from lightning_faces.generator import FaceGenerator, load_generator
from lightning_faces.parsing import Commands, at_least
from lightning_faces.play import add_source, as_image, save_png

MAX_SEED = 2**31 - 1
MAX_SAVED = 24
GRID_COUNT = 10
EDIT_RANGE = 3.0  # latent-direction sliders run from -3 to 3 (units of the latent's std)
TRUNCATION_RANGE = (0.1, 1.0)
DISPLAY_SIZE = 256  # faces are shown enlarged to about this many pixels; downloads keep their size


def add_arguments(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="A local web page to play with a generator: Randomize, sliders, save, mix (run: serve --help).",
        description="Starts a local page: Randomize, a seed box, sliders, truncation, Save, Mix, Download PNG "
        "and a grid of 10. Needs the app extra: pip install -e '.[app]'.",
    )
    add_source(serve)
    serve.add_argument(
        "--classifier",
        default=None,
        help="an attribute classifier checkpoint: gives an unconditional model one slider per attribute "
        "(directions in latent space); ignored for conditional models, whose attributes are the sliders",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; anything else exposes the page")
    serve.add_argument("--port", type=at_least(1), default=7860)
    serve.add_argument("--directions-samples", type=at_least(100), default=2000, help="faces used to find directions")


@dataclass
class Character:
    """What a face is made of: its latent and its control values (attributes or latent edits)."""

    latent: list[float]
    controls: dict[str, float]
    seed: int | None = None  # None for a mixed character
    parents: list[str] = field(default_factory=list)

    def genes(self) -> str:
        return json.dumps(
            {"seed": self.seed, "latent": self.latent, "controls": self.controls, "parents": self.parents}
        )


class Studio:
    """The page's logic without the page: renders characters, mixes them (tested on its own)."""

    def __init__(self, generator: FaceGenerator, directions: dict[str, torch.Tensor] | None = None) -> None:
        self.generator = generator
        self.conditional = bool(generator.attributes)
        self.directions = {} if self.conditional else dict(directions or {})
        self.names = list(generator.attributes) if self.conditional else list(self.directions)
        self.low, self.high = (0.0, 1.0) if self.conditional else (-EDIT_RANGE, EDIT_RANGE)
        self.downloads = Path(tempfile.mkdtemp(prefix="lightning_faces_serve_"))

    def clamp(self, value: Any, low: float, high: float, default: float) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return default
        if number != number:  # NaN
            return default
        return min(max(number, low), high)

    def from_seed(self, seed: Any) -> Character:
        seed = int(self.clamp(seed, 0, MAX_SEED, 0))
        latent = self.generator.seed_latent(seed)
        if self.conditional:
            row = self.generator.seed_attributes(seed)
            controls = {name: float(value) for name, value in zip(self.names, row.tolist(), strict=True)}
        else:
            controls = dict.fromkeys(self.names, 0.0)
        return Character(latent.tolist(), controls, seed)

    def with_control(self, character: Character, name: str, value: Any) -> Character:
        if name not in character.controls:
            return character
        controls = dict(character.controls)
        controls[name] = self.clamp(value, self.low, self.high, controls[name])
        return Character(character.latent, controls, character.seed, character.parents)

    def render(self, character: Character, truncation: Any) -> torch.Tensor:
        """uint8 (3, S, S): the character's face at ``truncation``."""
        psi = self.clamp(truncation, *TRUNCATION_RANGE, 1.0)
        latent = torch.tensor(character.latent, dtype=torch.float32)[None]
        if self.conditional:
            row = torch.tensor([character.controls[name] for name in self.names], dtype=torch.float32)[None]
            return self.generator.render(latent, row, psi)[0]
        edited = latent * psi
        for name, value in character.controls.items():
            edited = edited + value * self.directions[name][None]
        return self.generator.render(edited, None, 1.0)[0]

    def mix(self, a: Character, b: Character, rng: random.Random) -> Character:
        """Each gene from one parent, chosen by a coin flip: a child, not an average.

        Never a copy of one parent where the parents differ in two genes or more: flips that
        give every differing gene to one parent (1 in 128 with an 8-gene latent) are drawn again.
        """
        differ = [i for i, (x, y) in enumerate(zip(a.latent, b.latent, strict=True)) if x != y]
        while True:
            from_a = [rng.random() < 0.5 for _ in a.latent]
            if len(differ) < 2 or len({from_a[i] for i in differ}) == 2:
                break
        latent = [x if take else y for x, y, take in zip(a.latent, b.latent, from_a, strict=True)]
        controls = {name: (a.controls[name] if rng.random() < 0.5 else b.controls[name]) for name in a.controls}
        return Character(latent, controls, None, [label(a), label(b)])

    def save_png(self, image: torch.Tensor, name: str = "face") -> str:
        path = self.downloads / uuid.uuid4().hex / f"{name}.png"  # names made here, never by the browser
        return str(save_png(image, path))

    def random_seed(self) -> int:
        return random.randrange(MAX_SEED)


def label(character: Character) -> str:
    return f"seed {character.seed}" if character.seed is not None else "mix of " + " x ".join(character.parents)


def build_page(studio: Studio, title: str):
    """The Gradio Blocks of the page."""
    import gradio as gr
    from PIL import Image

    def big(image: torch.Tensor):
        """The face enlarged for the screen (nearest neighbour: its pixels stay visible)."""
        side = image.shape[-1] * max(1, DISPLAY_SIZE // image.shape[-1])
        return as_image(image).resize((side, side), Image.Resampling.NEAREST)

    def show(character: Character, truncation: float):
        image = studio.render(character, truncation)
        name = f"seed{character.seed:06d}" if character.seed is not None else "mixed"
        return (
            big(image),
            character,
            character.seed,
            character.genes(),
            studio.save_png(image, name),
            *[gr.update(value=character.controls[name]) for name in studio.names],
        )

    def randomize(truncation):
        return show(studio.from_seed(studio.random_seed()), truncation)

    def from_seed(seed, truncation):
        return show(studio.from_seed(seed), truncation)

    def retruncate(character, truncation):
        return show(character, truncation)

    def save(character, saved):
        saved = (saved + [character])[-MAX_SAVED:]
        return saved, *gallery_updates(saved)

    def gallery_updates(saved):
        items = [(big(studio.render(c, 1.0)), f"#{i + 1} {label(c)}") for i, c in enumerate(saved)]
        choices = [f"#{i + 1} {label(c)}" for i, c in enumerate(saved)]
        first = choices[-2] if len(choices) > 1 else (choices[0] if choices else None)
        return (
            items,
            gr.update(choices=choices, value=first),
            gr.update(choices=choices, value=choices[-1] if choices else None),
        )

    def pick(saved, choice):
        index = next((i for i, c in enumerate(saved) if f"#{i + 1} {label(c)}" == choice), None)
        return saved[index] if index is not None else None

    def mix(saved, choice_a, choice_b, truncation):
        a, b = pick(saved, choice_a), pick(saved, choice_b)
        if a is None or b is None:
            raise gr.Error("Save two characters first, then pick them as parents A and B.")
        return show(studio.mix(a, b, random.Random()), truncation)

    def recall(saved, truncation, event: gr.SelectData):
        index = int(event.index) if isinstance(event.index, int) else 0
        return show(saved[min(index, len(saved) - 1)], truncation)

    def ten(truncation):
        faces = [studio.render(studio.from_seed(studio.random_seed()), truncation) for _ in range(GRID_COUNT)]
        return [big(face) for face in faces]

    def slide(name):
        def move(character, value, truncation):
            return show(studio.with_control(character, name, value), truncation)

        return move

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        character = gr.State(studio.from_seed(0))
        saved = gr.State([])
        gr.Markdown(f"## {title}\n{studio.generator.describe()}")
        with gr.Row():
            with gr.Column(scale=1):
                face = gr.Image(
                    label="Face", type="pil", format="png", height=DISPLAY_SIZE + 16, elem_id="face",
                    buttons=[], interactive=False,
                )  # fmt: skip
                download = gr.DownloadButton("Download PNG", elem_id="download")
                with gr.Row():
                    randomize_button = gr.Button("Randomize", variant="primary", elem_id="randomize")
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                truncation = gr.Slider(*TRUNCATION_RANGE, value=1.0, step=0.05, label="Truncation (psi)",
                                       elem_id="truncation")  # fmt: skip
                save_button = gr.Button("Save character", elem_id="save")
            with gr.Column(scale=1):
                sliders = []
                if not studio.names:
                    gr.Markdown("No sliders: this model is unconditional; start `serve` with `--classifier`.")
                for name in studio.names:
                    sliders.append(
                        gr.Slider(
                            studio.low,
                            studio.high,
                            value=0.0,
                            step=0.05,
                            label=name.replace("_", " "),
                            elem_id=f"slider-{name}",
                        )  # fmt: skip
                    )
        with gr.Row():
            gallery = gr.Gallery(
                label="Saved characters (click one to bring it back)", columns=8, height=170, object_fit="contain",
                fit_columns=False, elem_id="saved", allow_preview=False,
            )  # fmt: skip
        with gr.Row():
            parent_a = gr.Dropdown(label="Parent A", choices=[], elem_id="parent-a")
            parent_b = gr.Dropdown(label="Parent B", choices=[], elem_id="parent-b")
            mix_button = gr.Button("Mix", elem_id="mix")
        genes = gr.Textbox(
            label="Genes of the face on screen (JSON: seed, latent, controls)", interactive=False, lines=2,
            max_lines=4, elem_id="genes",
        )  # fmt: skip
        ten_button = gr.Button(f"Generate {GRID_COUNT}", elem_id="ten")
        grid = gr.Gallery(
            label=f"{GRID_COUNT} new faces",
            columns=GRID_COUNT,
            height=150,
            object_fit="contain",
            fit_columns=False,
            elem_id="grid",
        )

        shown = [face, character, seed, genes, download, *sliders]
        randomize_button.click(randomize, [truncation], shown)
        seed.submit(from_seed, [seed, truncation], shown)
        truncation.release(retruncate, [character, truncation], shown)
        for name, slider in zip(studio.names, sliders, strict=True):
            slider.release(slide(name), [character, slider, truncation], shown)
        save_button.click(save, [character, saved], [saved, gallery, parent_a, parent_b])
        mix_button.click(mix, [saved, parent_a, parent_b, truncation], shown)
        gallery.select(recall, [saved, truncation], shown)
        ten_button.click(ten, [truncation], [grid])
        page.load(from_seed, [seed, truncation], shown)
    return page


def offline_theme():
    """Gradio's default theme with the system's fonts, so the page never depends on font files
    from elsewhere (with Gradio 6.31 the stock theme made no outside request either)."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def make_studio(args: argparse.Namespace) -> Studio:
    generator = load_generator(args.generator, device=args.device)
    directions = None
    if not generator.attributes and args.classifier:
        from lightning_faces.control import latent_directions, load_judge

        classifier, _ = load_judge(args.classifier, ())
        if classifier.image_size != generator.image_size:
            print(
                f"note: the classifier sees {classifier.image_size}px faces, the generator makes "
                f"{generator.image_size}px; faces are resized for it",
                file=sys.stderr,
            )
        started = time.perf_counter()
        directions = latent_directions(generator, classifier, count=args.directions_samples)
        print(
            f"found {len(directions)} latent directions with the classifier in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    return Studio(generator, directions)


def check_port_free(host: str, port: int) -> None:
    """Refuses a port another program (another serve) listens on, in one line, before loading anything."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FacesError(f"--host {host} is not an address of this machine ({error.strerror})") from error
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed port is free
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise FacesError(
                    f"port {port} on {host} is in use (another serve, or another program): "
                    f"choose another with --port, e.g. --port {port + 1}"
                ) from error
            raise FacesError(
                f"cannot listen on {host} port {port} ({error.strerror}): check --host and --port"
            ) from error


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as error:
        raise FacesError(f"serve needs Gradio ({error}): pip install -e '.[app]'") from error
    check_port_free(args.host, args.port)
    studio = make_studio(args)  # a bad checkpoint is one line here, before any server starts
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host}: anyone who can reach port {args.port} of this machine can use the "
            "page (there is no login)",
            file=sys.stderr,
        )
    page = build_page(studio, "lightning_faces")
    print(f"serving {studio.generator.describe()} at http://{args.host}:{args.port}", file=sys.stderr)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        theme=offline_theme(),
        footer_links=[],
        quiet=True,
        max_file_size="1kb",  # the page takes no uploads
        allowed_paths=[str(studio.downloads)],
    )
