"""The web page in a real headless browser: Debian's Chromium driven by Playwright, on the tiny demo model.

The page is served by `python -m dalle2_pytorch.app` (and `dream --serve`) in a subprocess on a free
port. Chromium comes from `scripts/install_browser.sh` (run by `make test`); Playwright never downloads
a browser. A missing Chromium fails these tests: they never skip.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from dalle2_pytorch.app.server import free_port

pytestmark = pytest.mark.slow  # the tiny demo run, a server process and a browser (~25 s after the demo)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADDRESS = re.compile(r"Serving the DALL·E 2 web page at (http://\S+) ")


class Server:
    """A page server subprocess; its output is collected by a thread."""

    def __init__(self, argv: list[str], tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "GRADIO_TEMP_DIR": str(tmp / "gradio"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, encoding="utf-8")
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def address(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = ADDRESS.search(line)
            if match:
                return match.group(1)
        raise AssertionError(f"the server printed no address (exit {self.proc.poll()}):\n{''.join(self.output)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page_url(tiny_demo, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("web_page")
    server = Server(["-m", "dalle2_pytorch.app", "--model-dir", str(tiny_demo[0]), "--port", str(free_port()),
                     "--device", "cpu", "--num-images", "2"], tmp)
    try:
        yield server.address()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile; the list of requests that left this machine."""
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: the web page test needs Debian's chromium (bash scripts/install_browser.sh, "
        "which `make test` runs, or apt-get install -y chromium)"
    )
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium_profile_", dir=tmp_path_factory.mktemp("browser"))
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        context.set_default_timeout(60_000)
        outside: list[str] = []
        context.on("request", lambda r: outside.append(r.url)
                   if not re.match(r"(https?|wss?)://(127\.0\.0\.1|localhost)[:/]|data:|blob:", r.url) else None)
        try:
            yield context, outside
        finally:
            context.close()


def _open(browser, url: str):
    context, _ = browser
    page = context.new_page()
    page.goto(url)
    page.locator("#prompt textarea").wait_for()
    return page


def _wait_for_images(page, gallery: str, count: int) -> list[list[int]]:
    """Waits until `count` loaded images are in the gallery; returns their natural sizes."""
    page.wait_for_function(
        """([sel, n]) => { const imgs = [...document.querySelectorAll(sel + ' img')];
                           return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=[f"#{gallery}", count],
    )
    return page.eval_on_selector_all(f"#{gallery} img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")


def _no_trace(page) -> None:
    text = page.locator("body").inner_text()
    for marker in ("Traceback", 'File "/'):
        assert marker not in text, text


def test_prompt_generate_shows_images(page_url, browser):
    page = _open(browser, page_url)
    # the settings start at the model folder's defaults (its dalle2.json), like dream's
    assert float(page.locator("#decoder_scale input").input_value()) == 2.0
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#generate").click()
    sizes = _wait_for_images(page, "gallery", 2)
    assert len(sizes) == 2 and all(w > 0 and h > 0 for w, h in sizes)
    assert "2 image(s) — seed 0" in page.locator("#status").inner_text()
    assert page.locator(".toast-body").count() == 0
    _no_trace(page)
    assert browser[1] == [], f"the page fetched from outside this machine: {browser[1]}"
    page.close()


@pytest.mark.parametrize("field, value, message", [
    ("#prompt textarea", "   ", "the prompt is empty"),
    ("#steps textarea", "0", "steps must be at least 1, got 0"),
    ("#prior_scale input", "-1", "prior guidance scale must be a number >= 0"),
    ("#sampler input", "warp_drive", "unknown sampler 'warp_drive'"),
    ("#decoder_scale input", "", "decoder guidance scale must be a number >= 0"),
])
def test_bad_input_shows_an_error_on_the_page(page_url, browser, field, value, message):
    page = _open(browser, page_url)
    page.locator("#prompt textarea").fill("a red circle")
    box = page.locator(field)
    box.fill(value)
    box.press("Enter" if "sampler" in field else "Tab")
    page.locator("#generate").click()
    error = page.locator(".toast-body", has_text=message)
    error.wait_for(state="visible")
    assert error.is_visible()
    assert page.locator("#gallery img").count() == 0
    _no_trace(page)
    page.close()


def test_variations_and_interpolation_tabs(page_url, browser, tmp_path):
    page = _open(browser, page_url)
    photo = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (210, 30, 30)).save(photo)
    page.get_by_role("tab", name="Variations").click()
    page.locator("#variation_image input[type=file]").set_input_files(str(photo))
    page.locator("#vary").click()
    assert len(_wait_for_images(page, "variation_gallery", 2)) == 2

    page.get_by_role("tab", name="Interpolation").click()
    page.locator("#start_prompt textarea").fill("a red circle")
    page.locator("#end_prompt textarea").fill("a blue square")
    page.locator("#interpolate").click()
    sizes = _wait_for_images(page, "interpolation_gallery", 5)
    assert len(sizes) == 5 and all(w > 0 for w, _ in sizes)
    assert "5 frames" in page.locator("#interpolation_status").inner_text()
    _no_trace(page)
    page.close()


def test_dream_serve_prints_the_local_address(tiny_demo, tmp_path):
    port = free_port()
    server = Server(["-m", "dalle2_pytorch.cli", "--serve", "--model-dir", str(tiny_demo[0]), "--host", "127.0.0.1",
                     "--port", str(port), "--seed", "7", "--sampler", "ddim"], tmp_path)
    try:
        url = server.address()
        assert url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=30) as response:
            html = response.read().decode("utf-8")
        assert response.status == 200 and "gradio" in html.lower()
        config = urllib.request.urlopen(url + "config", timeout=30).read().decode("utf-8")
        assert '"value":7' in config.replace(" ", "") and '"ddim"' in config  # the flags are the page's defaults
    finally:
        server.stop()
    assert not any("Traceback" in line for line in server.output), "".join(server.output)
