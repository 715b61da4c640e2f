"""A manual check (not a CI test): notebook 06's explorer runs in JupyterLab and Notebook 7.

For each front end: start the server, open notebook 06 in headless Chromium (Playwright,
Debian's /usr/bin/chromium), run its first cell, wait for the explorer, drag the
random-blocks slider, and check that the stats text and the picture change; a screenshot
goes to artifacts/frontend_<app>.png. CI covers the standalone page (tests/test_browser.py).

    python scripts/verify_frontends.py [lab] [notebook]
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = str(Path(__file__).resolve().parent.parent)
ART = f"{ROOT}/artifacts"
os.makedirs(ART, exist_ok=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(app: str, path: str):
    port = free_port()
    log = open(f"/tmp/{app}.log", "wb")
    proc = subprocess.Popen(
        [
            f"{ROOT}/.venv/bin/jupyter",
            app,
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--allow-root",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={ROOT}",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            b = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = b.new_page(viewport={"width": 1500, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}{path}", timeout=120_000)
            code = page.locator(".jp-CodeCell").first
            code.wait_for(timeout=120_000)
            time.sleep(8)  # kernel start
            code.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            stats = page.locator(".sae-stats", has_text="density").first
            msg = page.locator(".sae-message", has_text="updated in").first
            msg.wait_for(timeout=240_000)
            before = stats.inner_text()
            img_before = page.locator("img.sae-mask").first.get_attribute("src")
            slider = page.locator(".sae-random_blocks").first
            slider.scroll_into_view_if_needed()
            h = slider.locator(".noUi-handle").bounding_box()
            t = slider.locator(".noUi-target").bounding_box()
            y = h["y"] + h["height"] / 2
            page.mouse.move(h["x"] + h["width"] / 2, y)
            page.mouse.down()
            page.mouse.move(t["x"] + 0.9 * t["width"], y, steps=10)
            page.mouse.up()
            page.wait_for_function(
                "old => document.querySelector('.sae-stats').innerText !== old",
                arg=before,
                timeout=120_000,
            )
            img_after = page.locator("img.sae-mask").first.get_attribute("src")
            time.sleep(3)
            page.screenshot(path=f"{ART}/frontend_{app}.png", full_page=False)
            print(
                app,
                "OK: stats changed; image src changed:",
                img_before != img_after,
                "| readout:",
                slider.locator(".widget-readout").inner_text(),
            )
            b.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


which = sys.argv[1:] or ["lab", "notebook"]
if "lab" in which:
    run("lab", "/lab/tree/notebooks/06_mask_explorer.ipynb")
if "notebook" in which:
    run("notebook", "/notebooks/notebooks/06_mask_explorer.ipynb")
