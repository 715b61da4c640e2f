"""The mask explorer in a real browser: Voila serves notebook 06, headless Chromium drives it.

The test starts the standalone page exactly as a user would (the README's voila command,
on a free localhost port), drags the "random blocks" slider with the mouse, and checks
that the picture and the stats the page shows change; then types an invalid seq_len and
checks the widget shows a message. A screenshot is saved to artifacts/ for a human look.

Needs Debian's `chromium` (`.ci/run` installs it through `make browser`). It is never
skipped silently: without /usr/bin/chromium it fails; set SPARSE_ATTN_EDU_SKIP_BROWSER=1 to
skip it on purpose.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_mask_explorer.ipynb"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 60  # until Voila accepts connections
RENDER_S = 300  # until the notebook has run and the widget is drawn (2 loaded cores)
UPDATE_S = 120  # until one change reaches the page

if os.environ.get("SPARSE_ATTN_EDU_SKIP_BROWSER") == "1":
    pytest.skip(
        "SPARSE_ATTN_EDU_SKIP_BROWSER=1: browser test skipped on request", allow_module_level=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, name: str = "voila") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{name} did not listen on port {port} within {timeout} s")


def drag_slider(page, slider, fraction: float) -> None:
    """Drag an ipywidgets slider's handle to `fraction` of its track and release it."""
    handle = slider.locator(".noUi-handle").bounding_box()
    track = slider.locator(".noUi-target").bounding_box()
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], y, steps=10)
    page.mouse.up()


@pytest.fixture
def voila_url(tmp_path):
    """Voila serving notebook 06 on a free port; always stopped, with its kernels."""
    port = free_port()
    log = open(tmp_path / "voila.log", "wb")  # noqa: SIM115 -- closed in the finally below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            str(NOTEBOOK),
            f"--port={port}",
            "--no-browser",
            "--Voila.ip=127.0.0.1",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: kernels die with it
    )
    try:
        wait_for_port(port, proc, SERVER_START_S)
        yield f"http://127.0.0.1:{port}/"
    finally:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        log.close()
        print((tmp_path / "voila.log").read_text(errors="replace")[-3000:])


@pytest.fixture
def chromium() -> str:
    """Debian's chromium, or a clear failure (never a silent skip)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"the browser test needs Debian's chromium at {CHROMIUM} (`make browser` or "
            "`apt-get install -y chromium`); set SPARSE_ATTN_EDU_SKIP_BROWSER=1 to skip it"
        )
    return CHROMIUM


def test_slider_changes_picture_and_stats(chromium, voila_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(voila_url, timeout=RENDER_S * 1000)
            stats = page.locator(".sae-stats")
            mask = page.locator("img.sae-mask")
            stats.filter(has_text="density").wait_for(timeout=RENDER_S * 1000)
            mask.wait_for(timeout=UPDATE_S * 1000)
            # The notebook's later cells keep the kernel busy; the explorer answers after.
            page.locator(".sae-message", has_text="updated in").wait_for(timeout=RENDER_S * 1000)

            slider = page.locator(".sae-random_blocks")
            before = {
                "stats": stats.inner_text(),
                "src": mask.get_attribute("src"),
                "png": mask.screenshot(),
                "value": slider.locator(".widget-readout").inner_text(),
            }
            drag_slider(page, slider, 0.8)  # the slider updates on release
            page.wait_for_function(
                "old => document.querySelector('.sae-stats').innerText !== old",
                arg=before["stats"],
                timeout=UPDATE_S * 1000,
            )
            page.wait_for_function(
                "old => document.querySelector('img.sae-mask').src !== old",
                arg=before["src"],
                timeout=UPDATE_S * 1000,
            )
            assert slider.locator(".widget-readout").inner_text() != before["value"]
            assert stats.inner_text() != before["stats"]
            assert mask.screenshot() != before["png"]
            # Reachability arrives from the kernel's worker thread.
            page.locator(".sae-reach-text", has_text="pairs are connected").wait_for(
                timeout=UPDATE_S * 1000
            )
            page.screenshot(path=str(ARTIFACTS / "mask_explorer.png"), full_page=True)

            # An invalid value: a short message in the widget, not a traceback.
            seq_len = page.locator(".sae-seq_len input")
            seq_len.fill("0")
            seq_len.press("Enter")
            message = page.locator(".sae-message", has_text="expected seq_len")
            message.wait_for(timeout=UPDATE_S * 1000)
            assert "Traceback" not in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "mask_explorer_invalid.png"), full_page=True)
        finally:
            browser.close()
