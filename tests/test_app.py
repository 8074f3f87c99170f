"""The serve page in a real browser: Debian's chromium driven by Playwright, headless, offline.

Needs the app extra (Gradio), Playwright for Python and a chromium executable
(``LIGHTNING_FACES_CHROMIUM``, else ``chromium`` on PATH). Skipped when one is missing, unless
``LIGHTNING_FACES_REQUIRE_BROWSER`` is set (CI installs them and sets it): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PLAY_ATTRIBUTES as ATTRIBUTES
from tests.conftest import REPO, free_port, run_cli

SCREENSHOTS = os.environ.get("LIGHTNING_FACES_SCREENSHOTS")  # a folder to keep the screenshots in


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


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, checkpoints):
    reason = missing_requirements()
    if reason:
        if os.environ.get("LIGHTNING_FACES_REQUIRE_BROWSER"):
            pytest.fail(f"LIGHTNING_FACES_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("app")
    assert run_cli(["export", str(checkpoints["conditional"]), "exported"], cwd=root).returncode == 0
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
    url = f"http://127.0.0.1:{port}/"
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
        yield url, root
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_randomize_sliders_save_mix_and_download_in_a_browser(page_url, tmp_path):
    from playwright.sync_api import sync_playwright

    url, root = page_url
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    outside = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        # the page must work offline: record any request that leaves this machine
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
        page.goto(url)
        genes_box = page.locator("#genes textarea")

        def genes() -> dict:
            return json.loads(genes_box.input_value())

        def face_source() -> str:
            return page.locator("#face img").get_attribute("src") or ""

        def after(action, before: str) -> dict:
            action()
            page.wait_for_function(
                "before => document.querySelector('#genes textarea').value !== before", arg=before, timeout=30_000
            )
            return genes()

        page.wait_for_function("document.querySelector('#genes textarea')?.value.length > 10", timeout=60_000)
        first, first_face = genes(), face_source()
        parent_a = after(lambda: page.click("#randomize"), genes_box.input_value())
        page.wait_for_function("src => document.querySelector('#face img')?.src !== src", arg=first_face)
        assert parent_a["seed"] != first["seed"] and parent_a["latent"] != first["latent"]

        # drag the Eyeglasses slider from where it is to its other end, as a user would
        name = "Eyeglasses"
        current = parent_a["controls"][name]
        target = 0.0 if current > 0.5 else 1.0
        slider = f"#slider-{name} input[type=range]"
        # the sliders take the new character's values in the same update as the genes, but the
        # page may draw them later: start the drag once the thumb is where the value says
        page.wait_for_function(
            "([selector, value]) => Math.abs(parseFloat(document.querySelector(selector).value) - value) < 0.03",
            arg=[slider, current],
            timeout=30_000,
        )
        box = page.locator(slider).bounding_box()
        y = box["y"] + box["height"] / 2
        before = genes_box.input_value()
        page.mouse.move(box["x"] + box["width"] * current, y)
        page.mouse.down()
        # release on the track's last pixel: the page listens for the pointer's release on the slider
        page.mouse.move(box["x"] + box["width"] - 1 if target else box["x"] + 1, y, steps=8)
        page.mouse.up()
        page.wait_for_function(
            "before => document.querySelector('#genes textarea').value !== before", arg=before, timeout=30_000
        )
        edited = genes()
        assert edited["controls"][name] == target and edited["latent"] == parent_a["latent"]
        assert {k: v for k, v in edited["controls"].items() if k != name} == {
            k: v for k, v in parent_a["controls"].items() if k != name
        }
        page.screenshot(path=str(shots / "serve-slider.png"), full_page=True)

        # drag the truncation slider from 1 to about its middle: the face changes, the genes do not
        box = page.locator("#truncation input[type=range]").bounding_box()
        y = box["y"] + box["height"] / 2
        face = face_source()
        page.mouse.move(box["x"] + box["width"] - 1, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2, y, steps=8)
        page.mouse.up()
        page.wait_for_function("src => document.querySelector('#face img')?.src !== src", arg=face, timeout=30_000)
        truncation = float(page.locator("#truncation input[type=number]").input_value())
        assert 0.3 < truncation < 0.8 and genes() == edited

        # download the face on screen, then render the same seed, attributes and truncation with generate
        with page.expect_download() as download:
            page.click("#download")
        png = tmp_path / "downloaded.png"
        download.value.save_as(png)
        values = ",".join(f"{k}={v:g}" for k, v in edited["controls"].items())
        made = run_cli(
            ["generate", str(root / "exported"), "--seed", str(edited["seed"]), "--num", "1", "--truncation",
             str(truncation), "--attributes", values, "--out", str(tmp_path / "generated")],
            cwd=root,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
        generated = tmp_path / "generated" / f"seed{edited['seed']:06d}.png"
        downloaded = np.asarray(Image.open(png).convert("RGB"))
        assert np.array_equal(downloaded, np.asarray(Image.open(generated).convert("RGB")))

        # save two characters, mix them: each gene of the child is one parent's
        page.click("#save")
        page.wait_for_function("document.querySelectorAll('#saved img').length >= 1", timeout=30_000)
        parent_b = after(lambda: page.click("#randomize"), genes_box.input_value())
        page.click("#save")
        page.wait_for_function("document.querySelectorAll('#saved img').length >= 2", timeout=30_000)
        child = after(lambda: page.click("#mix"), genes_box.input_value())
        assert child["seed"] is None and len(child["parents"]) == 2
        assert all(x in (a, b) for x, a, b in zip(child["latent"], edited["latent"], parent_b["latent"], strict=True))
        assert 0 < sum(x == a for x, a in zip(child["latent"], edited["latent"], strict=True)) < len(child["latent"])
        assert all(child["controls"][k] in (edited["controls"][k], parent_b["controls"][k]) for k in ATTRIBUTES)

        # a click on a saved character brings it back
        back = after(lambda: page.locator("#saved img").first.click(), genes_box.input_value())
        assert back == edited

        page.click("#ten")
        page.wait_for_function(
            "[...document.querySelectorAll('#grid img')].filter(i => i.complete && i.naturalWidth > 0).length >= 10",
            timeout=60_000,
        )
        page.screenshot(path=str(shots / "serve.png"), full_page=True)
        browser.close()
    assert outside == [], f"the page fetched from the internet: {outside}"
