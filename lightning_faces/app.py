"""``serve``: a local web page to play with a trained generator (Gradio, the ``app`` extra).

One character on screen at a time (``character.Character``): Randomize draws a new seed, the
seed box shows any seed's face, the sliders move its controls, the truncation slider pulls it
toward the average face. Save keeps it in a gallery (click one to bring it back, at the
truncation it was saved with); Mix makes a child of two saved characters where each gene is
copied from one parent or the other, never averaged. Generate 10 shows ten new faces; a click
opens one in the editor. Download PNG gives the face at the generator's own size, the same
pixels ``generate --character`` renders from the copied genes on the same kind of device.

Sliders: a conditional model's attributes (0 to 1). An unconditional model gets the directions
along which its faces vary most (``directions.principal_directions``, "direction 1", ...), each
shown with a strip of faces along it, and, given ``--classifier``, named directions found
with it (``directions.latent_directions``).

Mistakes never blank the page: a bad seed or a Mix without two parents leaves the face, the
seed box and the genes as they were, with a line saying what to do beside them.

Safety: binds 127.0.0.1 unless ``--host`` says otherwise (with a warning); values from the
browser are clamped and never used as file names; at most ``MAX_SAVED`` characters are kept;
weights are loaded without unpickling. Offline: no fonts, scripts or analytics are fetched
(system fonts in the theme, analytics off, no share link, server-side rendering off).
"""

# no `from __future__ import annotations`: Gradio reads the event handlers' annotations
# (gr.SelectData) at run time, and a string annotation hides the event from it
import argparse
import errno
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from lightning_faces.character import EDIT_RANGE, Character, mix, render
from lightning_faces.errors import FacesError
from lightning_faces.generator import FaceGenerator, load_generator
from lightning_faces.parsing import Commands, at_least
from lightning_faces.play import add_source, as_image, save_png

MAX_SEED = 2**31 - 1
MAX_SAVED = 24
GRID_COUNT = 10
STRIP_VALUES = (-2.0, -1.0, 0.0, 1.0, 2.0)  # a direction's strip: the first face moved this far along it
TRUNCATION_RANGE = (0.0, 1.0)
DISPLAY_SIZE = 256  # faces are shown enlarged to about this many pixels; downloads keep their size
GENE_CELL = 6  # pixels per gene in the genes strip
PARENT_COLOURS = {"A": (37, 99, 235), "B": (234, 88, 12)}  # blue, orange

HELP = {
    "truncation": "1 leaves the face alone; lower pulls it toward the model's average face (0: the average).",
    "conditional": "Each slider sets one attribute the model was trained on (0: off, 1: on).",
    "directions": "Move the face along the directions in which this model's faces vary most "
    "(direction 1 the most); the strip shows the first face moved along each.",
    "mix": "Mix makes a child of two saved characters: each gene comes from parent A or B, never a blend.",
}
CSS = """
#saved .caption-label, #grid .caption-label { white-space: normal; overflow: visible; text-overflow: clip; }
#grid .caption-label { font-size: 11px; }
#grid .grid-container { grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)) !important; }
#grid .grid-wrap { min-height: 0 !important; height: auto !important; }
#parents { flex-wrap: wrap; }
#parents > * { min-width: 160px !important; }
#message { min-height: 1.5em; color: #b45309; }
#genes-strip img { image-rendering: pixelated; }
"""


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
        help="an attribute classifier checkpoint: gives an unconditional model a named slider per attribute "
        "(directions in latent space) beside its principal directions; ignored for conditional models, whose "
        "attributes are the sliders",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; anything else exposes the page")
    serve.add_argument("--port", type=at_least(1), default=7860)


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

    def seed_problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` as a seed, in a line the page shows; None if nothing."""
        try:
            ok = value is not None and float(value) == int(value) and 0 <= int(value) <= MAX_SEED
        except (TypeError, ValueError, OverflowError):
            ok = False
        return None if ok else f"Seed {value} is not one of the page's seeds: type a whole number from 0 to {MAX_SEED}."

    def from_seed(self, seed: Any, truncation: Any = 1.0) -> Character:
        seed = int(self.clamp(seed, 0, MAX_SEED, 0))
        latent = self.generator.seed_latent(seed)
        if self.conditional:
            row = self.generator.seed_attributes(seed)
            controls = {name: float(value) for name, value in zip(self.names, row.tolist(), strict=True)}
        else:
            controls = dict.fromkeys(self.names, 0.0)
        return Character(tuple(latent.tolist()), controls, seed, truncation=self.psi(truncation))

    def psi(self, truncation: Any) -> float:
        return self.clamp(truncation, *TRUNCATION_RANGE, 1.0)

    def with_control(self, character: Character, name: str, value: Any) -> Character:
        if name not in character.controls:
            return character
        return character.with_control(name, self.clamp(value, self.low, self.high, character.controls[name]))

    def render(self, character: Character) -> torch.Tensor:
        """uint8 (3, S, S): the character's face at its truncation."""
        return render(self.generator, character.at(self.psi(character.truncation)), self.directions)

    def mix(self, a: Character, b: Character, rng: random.Random, names: tuple[str, str] | None = None) -> Character:
        return mix(a, b, rng, names)

    def direction_strip(self, name: str) -> torch.Tensor:
        """uint8 (3, S, 5 S): the first face (seed 0) moved along direction ``name`` by STRIP_VALUES."""
        start = self.from_seed(0)
        faces = [self.render(start.with_control(name, value)) for value in STRIP_VALUES]
        return torch.cat(faces, dim=2)

    def genes_strip(self, character: Character) -> torch.Tensor:
        """uint8 (3, h, w): one cell per gene, latent then controls. A drawn character's cells are
        grey by value (dark negative, light positive); a mixed one's coloured by the parent that
        gave each gene (A blue, B orange)."""
        if character.origin:
            cells = torch.tensor([PARENT_COLOURS[parent] for parent in character.origin], dtype=torch.float32)
        else:
            spans = [2.5] * len(character.latent) + [max(abs(self.low), self.high)] * len(character.controls)
            values = torch.tensor([*character.latent, *character.controls.values()]) / torch.tensor(spans)
            cells = (128 + 127 * values.clamp(-1, 1))[:, None].expand(-1, 3)
        side = GENE_CELL  # each gene a cell of side x 2 side pixels
        strip = cells.T[:, None, :, None].expand(3, 2 * side, len(cells), side).reshape(3, 2 * side, -1)
        return strip.round().to(torch.uint8)

    def save_png(self, image: torch.Tensor, name: str = "face") -> str:
        path = self.downloads / uuid.uuid4().hex / f"{name}.png"  # names made here, never by the browser
        return str(save_png(image, path))

    def random_seed(self) -> int:
        return random.randrange(MAX_SEED)


def slug(name: str) -> str:
    """A control's name as an element id part: "direction 1" -> "direction-1"."""
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


def build_page(studio: Studio, title: str):
    """The Gradio Blocks of the page."""
    import gradio as gr
    from PIL import Image

    def big(image: torch.Tensor, size: int = DISPLAY_SIZE):
        """An image enlarged for the screen (nearest neighbour: its pixels stay visible)."""
        scale = max(1, size // image.shape[-2])
        return as_image(image).resize((image.shape[-1] * scale, image.shape[-2] * scale), Image.Resampling.NEAREST)

    def show(character: Character, message: str = ""):
        image = studio.render(character)
        return (
            big(image),
            character,
            character.seed,
            character.genes(),
            as_image(studio.genes_strip(character)),
            studio.save_png(image, character.file_stem()),
            gr.update(value=character.truncation),
            message,
            *[gr.update(value=character.controls[name]) for name in studio.names],
        )

    def keep(character: Character, message: str):
        """A mistake: everything stays as it was (the seed box shows the face's seed again), and
        the message says what to do."""
        return (
            gr.skip(),
            gr.skip(),
            character.seed,
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.skip(),
            message,
            *[gr.skip() for _ in studio.names],
        )

    def randomize(truncation):
        return show(studio.from_seed(studio.random_seed(), truncation))

    def from_seed(seed, character, truncation):
        problem = studio.seed_problem(seed)
        if problem:
            return keep(character, problem)
        return show(studio.from_seed(seed, truncation))

    def first(truncation):
        return show(studio.from_seed(0, truncation))

    def retruncate(character, truncation):
        return show(character.at(studio.psi(truncation)))

    def save(character, saved):
        saved = (saved + [character])[-MAX_SAVED:]
        return saved, *gallery_updates(saved), ""

    def caption(index: int, character: Character) -> str:
        return f"#{index + 1} {character.label()}"

    def gallery_updates(saved):
        items = [(big(studio.render(c), 128), caption(i, c)) for i, c in enumerate(saved)]
        choices = [caption(i, c) for i, c in enumerate(saved)]
        first_choice = choices[-2] if len(choices) > 1 else (choices[0] if choices else None)
        return (
            items,
            gr.update(choices=choices, value=first_choice),
            gr.update(choices=choices, value=choices[-1] if choices else None),
        )

    def pick(saved, choice):
        return next((c for i, c in enumerate(saved) if caption(i, c) == choice), None)

    def mix_parents(saved, choice_a, choice_b, character, truncation):
        if len(saved) < 2:
            return keep(
                character,
                f"Mix needs two saved characters and you have {len(saved)}: Save this face, find another, Save it.",
            )
        a, b = pick(saved, choice_a), pick(saved, choice_b)
        if a is None or b is None:
            return keep(character, "Pick the two parents, A and B, from the saved characters.")
        if choice_a == choice_b:
            return keep(character, "Parents A and B are the same character: pick two different ones.")
        names = (choice_a.split()[0], choice_b.split()[0])  # "#1", "#2"
        return show(studio.mix(a, b, random.Random(), names).at(studio.psi(truncation)))

    def recall(saved, event: gr.SelectData):
        index = int(event.index) if isinstance(event.index, int) else 0
        return show(saved[min(index, len(saved) - 1)])

    def ten(truncation):
        seeds = [studio.random_seed() for _ in range(GRID_COUNT)]
        faces = [(big(studio.render(studio.from_seed(s, truncation)), 128), f"seed {s}") for s in seeds]
        return faces, seeds

    def open_from_grid(seeds, truncation, event: gr.SelectData):
        index = int(event.index) if isinstance(event.index, int) else 0
        return show(studio.from_seed(seeds[min(index, len(seeds) - 1)], truncation))

    def slide(name):
        def move(character, value):
            return show(studio.with_control(character, name, value))

        return move

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        character = gr.State(studio.from_seed(0))
        saved = gr.State([])
        grid_seeds = gr.State([])
        gr.Markdown(f"## {title}\n{studio.generator.describe()}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                face = gr.Image(
                    label="Face", type="pil", format="png", height=DISPLAY_SIZE + 16, elem_id="face",
                    buttons=[], interactive=False,
                )  # fmt: skip
                download = gr.DownloadButton("Download PNG", elem_id="download")
                with gr.Row():
                    randomize_button = gr.Button("Randomize", variant="primary", elem_id="randomize")
                    seed = gr.Number(label="Seed (Enter to show)", value=0, precision=0, elem_id="seed")
                message = gr.Markdown("", elem_id="message")
                truncation = gr.Slider(*TRUNCATION_RANGE, value=1.0, step=0.05, label="Truncation (psi)",
                                       info=HELP["truncation"], elem_id="truncation")  # fmt: skip
                save_button = gr.Button("Save character", elem_id="save")
            with gr.Column(scale=1, min_width=280):
                sliders = []
                gr.Markdown(HELP["conditional"] if studio.conditional else HELP["directions"], elem_id="sliders-help")
                for name in studio.names:
                    sliders.append(
                        gr.Slider(
                            studio.low,
                            studio.high,
                            value=0.0,
                            step=0.05,
                            label=name.replace("_", " "),
                            elem_id=f"slider-{slug(name)}",
                        )  # fmt: skip
                    )
                    if not studio.conditional:
                        gr.Image(
                            value=big(studio.direction_strip(name), 64), show_label=False, container=False,
                            interactive=False, buttons=[], height=72, elem_id=f"strip-{slug(name)}",
                        )  # fmt: skip
        with gr.Row():
            gallery = gr.Gallery(
                label="Saved characters (click one to bring it back)", columns=8, height=190, object_fit="contain",
                fit_columns=False, elem_id="saved", allow_preview=False, format="png",
            )  # fmt: skip
        gr.Markdown(HELP["mix"], elem_id="mix-help")
        with gr.Row(elem_id="parents"):
            parent_a = gr.Dropdown(label="Parent A", choices=[], elem_id="parent-a")
            parent_b = gr.Dropdown(label="Parent B", choices=[], elem_id="parent-b")
            mix_button = gr.Button("Mix", elem_id="mix")
        gr.Markdown(
            "Genes: a cell each, latent then controls; grey by value, or after a mix blue from parent A, orange "
            "from B.", elem_id="genes-help",
        )  # fmt: skip
        genes_strip = gr.Image(
            type="pil", format="png", interactive=False, buttons=[], show_label=False, container=False, height=32,
            elem_id="genes-strip",
        )  # fmt: skip
        copy_button = gr.Button("Copy genes", size="sm", elem_id="copy-genes")
        genes = gr.Textbox(label="Genes (JSON)", visible="hidden", elem_id="genes")
        ten_button = gr.Button(f"Generate {GRID_COUNT}", elem_id="ten")
        grid = gr.Gallery(
            label=f"{GRID_COUNT} new faces (click one to edit it)", columns=GRID_COUNT, height="auto",
            object_fit="contain", fit_columns=False, allow_preview=False, elem_id="grid", format="png",
        )  # fmt: skip

        shown = [face, character, seed, genes, genes_strip, download, truncation, message, *sliders]
        randomize_button.click(randomize, [truncation], shown)
        seed.submit(from_seed, [seed, character, truncation], shown)
        truncation.release(retruncate, [character, truncation], shown)
        for name, slider in zip(studio.names, sliders, strict=True):
            slider.release(slide(name), [character, slider], shown)
        save_button.click(save, [character, saved], [saved, gallery, parent_a, parent_b, message])
        mix_button.click(mix_parents, [saved, parent_a, parent_b, character, truncation], shown)
        gallery.select(recall, [saved], shown)
        ten_button.click(ten, [truncation], [grid, grid_seeds])
        grid.select(open_from_grid, [grid_seeds, truncation], shown)
        copy_button.click(None, [genes], None, js="(genes) => { navigator.clipboard?.writeText(genes); return genes; }")
        page.load(first, [truncation], shown)
    return page


def offline_theme():
    """Gradio's default theme with the system's fonts, so the page never depends on font files
    from elsewhere (with Gradio 6.31 the stock theme made no outside request either)."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def make_studio(args: argparse.Namespace) -> Studio:
    generator = load_generator(args.generator, device=args.device)
    if generator.attributes:
        return Studio(generator)
    from lightning_faces.directions import slider_directions

    started = time.perf_counter()
    directions = slider_directions(generator, args.classifier)
    print(f"found {len(directions)} slider directions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
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
        css=CSS,
        footer_links=[],
        quiet=True,
        max_file_size="1kb",  # the page takes no uploads
        allowed_paths=[str(studio.downloads)],
    )
