"""The serve page in a real browser: Debian's chromium driven by Playwright, headless, offline.

Needs the app extra (Gradio), Playwright for Python and a chromium executable
(``LIGHTNING_FACES_CHROMIUM``, else ``chromium`` on PATH). Skipped when one is missing, unless
``LIGHTNING_FACES_REQUIRE_BROWSER`` is set (CI installs them and sets it): then it fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PLAY_ATTRIBUTES as ATTRIBUTES
from tests.conftest import REPO, free_port, run_cli

SCREENSHOTS = os.environ.get("LIGHTNING_FACES_SCREENSHOTS")  # a folder to keep the screenshots in
WAIT = 30_000  # ms for one render to reach the page


def missing_requirements() -> str | None:
    try:
        import gradio  # noqa: F401
        import playwright  # noqa: F401
    except ModuleNotFoundError as error:
        return f"{error.name} is not installed (pip install -e '.[dev,app]')"
    if not chromium():
        return "no chromium executable (apt-get install chromium, or set LIGHTNING_FACES_CHROMIUM)"
    return None


def chromium() -> str | None:
    return os.environ.get("LIGHTNING_FACES_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serving(checkpoint: Path, root: Path):
    """``serve`` on an export of ``checkpoint``, in its own process; yields (url, root)."""
    reason = missing_requirements()
    if reason:
        if os.environ.get("LIGHTNING_FACES_REQUIRE_BROWSER"):
            pytest.fail(f"LIGHTNING_FACES_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    assert run_cli(["export", str(checkpoint), "exported"], cwd=root).returncode == 0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = open(root / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "lightning_faces", "serve", "exported", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"serve did not open port {port}: {(root / 'serve.log').read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/", root
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def conditional_page(tmp_path_factory, checkpoints):
    with serving(checkpoints["conditional"], tmp_path_factory.mktemp("app")) as served:
        yield served


@pytest.fixture(scope="module")
def plain_page(tmp_path_factory, checkpoints):
    with serving(checkpoints["plain"], tmp_path_factory.mktemp("app-plain")) as served:
        yield served


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """A Playwright page on the serve page, with what the tests read off it."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 1000) -> None:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        self.page = context.new_page()
        self.outside: list[str] = []  # the page must work offline: any request that leaves this machine
        self.page.on(
            "request",
            lambda r: self.outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None,
        )
        self.page.goto(url)
        self.page.wait_for_function("document.querySelector('#genes textarea')?.value.length > 10", timeout=60_000)

    def genes(self) -> dict:
        return json.loads(self.page.locator("#genes textarea").input_value())

    def face_source(self) -> str:
        return self.page.locator("#face img").get_attribute("src") or ""

    def pixels(self, selector: str) -> np.ndarray:
        """The image at ``selector`` as the server sent it."""
        source = self.page.locator(selector).get_attribute("src") or ""
        return np.asarray(Image.open(io.BytesIO(self.page.request.get(source).body())).convert("RGB"))

    def after(self, action) -> dict:
        """Runs ``action`` and returns the genes once they have changed."""
        before = self.page.locator("#genes textarea").input_value()
        action()
        self.page.wait_for_function(
            "before => document.querySelector('#genes textarea').value !== before", arg=before, timeout=WAIT
        )
        return self.genes()

    def drag(self, selector: str, start: float, end: float) -> None:
        """Drags a slider's thumb from ``start`` to ``end`` (fractions of its track), as a user would;
        the page listens for the pointer's release on the slider."""
        track = self.page.locator(f"{selector} input[type=range]")
        track.scroll_into_view_if_needed()
        box = track.bounding_box()
        y = box["y"] + box["height"] / 2
        x = lambda f: box["x"] + min(max(f * box["width"], 1), box["width"] - 1)  # noqa: E731
        self.page.mouse.move(x(start), y)
        self.page.mouse.down()
        self.page.mouse.move(x(end), y, steps=8)
        self.page.mouse.up()

    def wait_for_slider(self, selector: str, value: float) -> None:
        """The sliders take a character's values in the same update as its genes, but the page may
        draw them later: wait until the thumb is where the value says."""
        self.page.wait_for_function(
            "([s, v]) => Math.abs(parseFloat(document.querySelector(s).value) - v) < 0.03",
            arg=[f"{selector} input[type=range]", value],
            timeout=WAIT,
        )

    def message(self) -> str:
        return self.page.locator("#message").inner_text().strip()

    def wait_for_message(self, text: str) -> str:
        self.page.wait_for_function(
            "text => document.querySelector('#message')?.innerText.includes(text)", arg=text, timeout=WAIT
        )
        return self.message()

    def grid_ready(self) -> None:
        self.page.wait_for_function(
            "[...document.querySelectorAll('#grid img')].filter(i => i.complete && i.naturalWidth > 0).length >= 10",
            timeout=60_000,
        )


def shots(tmp_path: Path) -> Path:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_randomize_sliders_save_mix_and_download_in_a_browser(conditional_page, browser, tmp_path):
    url, root = conditional_page
    user = Page(browser, url)
    page = user.page
    first, first_face = user.genes(), user.face_source()
    parent_a = user.after(lambda: page.click("#randomize"))
    page.wait_for_function("src => document.querySelector('#face img')?.src !== src", arg=first_face)
    assert parent_a["seed"] != first["seed"] and parent_a["latent"] != first["latent"]

    # drag the Eyeglasses slider from where it is to its other end
    name = "Eyeglasses"
    current = parent_a["controls"][name]
    target = 0.0 if current > 0.5 else 1.0
    user.wait_for_slider(f"#slider-{name}", current)
    edited = user.after(lambda: user.drag(f"#slider-{name}", current, target))
    assert edited["controls"][name] == target and edited["latent"] == parent_a["latent"]
    assert {k: v for k, v in edited["controls"].items() if k != name} == {
        k: v for k, v in parent_a["controls"].items() if k != name
    }
    page.screenshot(path=str(shots(tmp_path) / "serve-slider.png"), full_page=True)

    # drag the truncation slider from 1 to about its middle: the face changes, the latent does not
    face = user.face_source()
    edited = user.after(lambda: user.drag("#truncation", 1.0, 0.5))
    page.wait_for_function("src => document.querySelector('#face img')?.src !== src", arg=face, timeout=WAIT)
    truncation = float(page.locator("#truncation input[type=number]").input_value())
    assert 0.3 < truncation < 0.7 and edited["truncation"] == truncation and edited["latent"] == parent_a["latent"]

    # download the face on screen; copy its genes; generate renders the same pixels from them
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == f"seed{edited['seed']:06d}-psi{truncation:.2f}.png"
    png = tmp_path / "downloaded.png"
    download.value.save_as(png)
    page.click("#copy-genes")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert json.loads(copied) == edited
    (tmp_path / "genes.json").write_text(copied)
    made = run_cli(
        ["generate", str(root / "exported"), "--character", str(tmp_path / "genes.json"), "--out", str(tmp_path)],
        cwd=root,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    generated = np.asarray(Image.open(tmp_path / download.value.suggested_filename).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), generated)

    # save two characters (the first at this truncation), mix them: each gene of the child is one parent's
    face = user.pixels("#face img")
    page.click("#save")
    page.wait_for_function("document.querySelectorAll('#saved img').length >= 1", timeout=WAIT)
    thumbnail = user.pixels("#saved img")  # drawn at the truncation it was saved with: the face on screen
    side = 16  # the generator's size; both are nearest-neighbour enlargements of its pixels
    assert np.array_equal(
        face[:: face.shape[0] // side, :: face.shape[1] // side],
        thumbnail[:: thumbnail.shape[0] // side, :: thumbnail.shape[1] // side],
    )
    parent_b = user.after(lambda: page.click("#randomize"))
    user.wait_for_slider("#truncation", truncation)  # a new face keeps the truncation chosen
    assert parent_b["truncation"] == truncation
    parent_b = user.after(lambda: user.drag("#truncation", truncation, 1.0))
    assert parent_b["truncation"] == 1.0
    page.click("#save")
    page.wait_for_function("document.querySelectorAll('#saved img').length >= 2", timeout=WAIT)
    captions = page.locator("#saved").inner_text()
    assert "#1 seed" in captions and "#2 seed" in captions
    cut = "[...document.querySelectorAll('#saved .caption-label')].filter(c => c.scrollWidth > c.clientWidth + 1)"
    assert page.evaluate(f"{cut}.length") == 0  # captions show whole
    strip, strip_source = user.pixels("#genes-strip img"), page.locator("#genes-strip img").get_attribute("src")
    child = user.after(lambda: page.click("#mix"))
    assert child["seed"] is None and child["parents"] == ["#1", "#2"]
    assert all(x in (a, b) for x, a, b in zip(child["latent"], edited["latent"], parent_b["latent"], strict=True))
    assert 0 < sum(x == a for x, a in zip(child["latent"], edited["latent"], strict=True)) < len(child["latent"])
    assert all(child["controls"][k] in (edited["controls"][k], parent_b["controls"][k]) for k in ATTRIBUTES)
    # the genes strip now shows which parent gave each gene: two colours, in the order of origin
    page.wait_for_function(
        "old => document.querySelector('#genes-strip img')?.getAttribute('src') !== old", arg=strip_source, timeout=WAIT
    )
    mixed = user.pixels("#genes-strip img")
    assert not np.array_equal(strip, mixed)
    colours = {tuple(c) for c in mixed.reshape(-1, 3)}
    assert colours == {(37, 99, 235), (234, 88, 12)}, colours

    # a click on a saved character brings it back at the truncation it was saved with
    back = user.after(lambda: page.locator("#saved img").first.click())
    assert back == edited
    user.wait_for_slider("#truncation", truncation)
    page.screenshot(path=str(shots(tmp_path) / "serve.png"), full_page=True)
    assert user.outside == [], f"the page fetched from the internet: {user.outside}"


def test_a_mistake_leaves_the_page_as_it_was_with_a_message(conditional_page, browser):
    url, _ = conditional_page
    user = Page(browser, url)
    page = user.page
    # a line of help beside truncation, Mix and the sliders
    assert "average face" in page.locator("#truncation").inner_text()
    assert "each gene comes from parent A or B" in page.locator("#mix-help").inner_text()
    assert "attribute the model was trained on" in page.locator("#sliders-help").inner_text()
    shown = user.after(lambda: page.click("#randomize"))
    face = user.face_source()
    for wrong in ("-5", "99999999999"):
        page.locator("#seed input").fill(wrong)
        page.locator("#seed input").press("Enter")
        assert "whole number from 0 to 2147483647" in user.wait_for_message(f"Seed {wrong}")
        page.wait_for_function(
            "seed => document.querySelector('#seed input').value === seed", arg=str(shown["seed"]), timeout=WAIT
        )
        assert user.face_source() == face and user.genes() == shown
        assert page.locator("#face .error, #seed .error, #genes .error").count() == 0  # no red badges
    # Mix before two characters are saved: the message says two are needed, nothing else moves
    page.click("#mix")
    assert "you have 0" in user.wait_for_message("Mix needs two saved characters")
    page.click("#save")
    page.wait_for_function("document.querySelectorAll('#saved img').length >= 1", timeout=WAIT)
    page.click("#mix")
    assert "you have 1" in user.wait_for_message("Mix needs two saved characters")
    assert user.face_source() == face and user.genes() == shown
    # a good seed then works again and clears the message
    user.after(lambda: (page.locator("#seed input").fill("12"), page.locator("#seed input").press("Enter")))
    assert user.genes()["seed"] == 12 and user.message() == ""


def test_every_model_has_sliders_and_the_grid_opens_faces_in_the_editor(plain_page, browser, tmp_path):
    url, _ = plain_page
    user = Page(browser, url)
    page = user.page
    assert "directions in which this model's faces vary most" in page.locator("#sliders-help").inner_text()
    start = user.genes()
    names = list(start["controls"])
    assert names == [f"direction {k}" for k in range(1, 7)]
    before = user.pixels("#face img")
    for name in names:  # each direction moves the face, and its strip shows five faces along it
        selector = f"#slider-{name.replace(' ', '-')}"
        assert page.locator(f"#strip-{name.replace(' ', '-')} img").count() == 1
        moved = user.after(lambda selector=selector: user.drag(selector, 0.5, 1.0))
        assert moved["controls"][name] == 3.0 and moved["latent"] == start["latent"]
        assert np.abs(user.pixels("#face img").astype(int) - before).mean() > 1.0, name
        user.after(lambda selector=selector: user.drag(selector, 1.0, 0.5))
    strip = user.pixels("#strip-direction-1 img")
    assert strip.shape[1] == 5 * strip.shape[0]

    # at truncation 0.5 the ten new faces are still ten different faces; a click opens one
    user.after(lambda: user.drag("#truncation", 1.0, 0.5))
    page.click("#ten")
    user.grid_ready()
    faces = [page.locator("#grid img").nth(i).screenshot() for i in range(10)]
    assert len(set(faces)) == 10
    caption = page.locator("#grid").inner_text()
    seeds = [int(seed) for seed in re.findall(r"seed (\d+)", caption)]
    assert len(seeds) == 10
    opened = user.after(lambda: page.locator("#grid img").nth(3).click())
    assert opened["seed"] == seeds[3] and 0.3 < opened["truncation"] < 0.7
    page.screenshot(path=str(shots(tmp_path) / "serve-unconditional.png"), full_page=True)
    assert user.outside == []


def test_the_page_fits_a_phone(conditional_page, browser, tmp_path):
    url, _ = conditional_page
    user = Page(browser, url, width=390, height=844)
    page = user.page
    page.click("#ten")
    user.grid_ready()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing scrolls sideways
    tops = {round(page.locator("#grid img").nth(i).bounding_box()["y"]) for i in range(10)}
    assert len(tops) > 1  # the ten faces wrap onto rows
    for parent in ("#parent-a", "#parent-b"):
        assert page.locator(parent).bounding_box()["width"] >= 150  # readable, not squeezed
    cut = page.evaluate(
        "[...document.querySelectorAll('#grid .caption-label')].filter(c => c.scrollWidth > c.clientWidth + 1).length"
    )
    assert cut == 0  # every face's seed shows whole
    page.screenshot(path=str(shots(tmp_path) / "serve-phone.png"), full_page=True)
