"""A manual check (not a CI test): notebook 06's explorer runs in JupyterLab and Notebook 7.

For each front end: start the server, open notebook 06 in headless Chromium (Playwright,
Debian's /usr/bin/chromium), run its first cell, wait for the explorer, drag the
random-blocks slider, and check that the stats text and the picture change; a screenshot
goes to artifacts/frontend_<app>.png. CI covers the standalone page (tests/test_browser.py),
whose browser and slider helpers this script shares.

    python scripts/verify_frontends.py [lab] [notebook]
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_browser import (  # noqa: E402
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    drag_slider,
    free_port,
    wait_for_port,
)

START_S, RUN_S = 60, 240  # server start; kernel start and the explorer's first draw


def run(app: str, path: str) -> None:
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(f"/tmp/{app}.log", "wb")  # noqa: SIM115 -- closed in the finally below
    server = [sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}"]
    server += ["--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--allow-root"]
    server += ["--ServerApp.password=", f"--ServerApp.root_dir={ROOT}"]
    proc = subprocess.Popen(
        server, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(port, proc, START_S, name=f"jupyter {app}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1500, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}{path}", timeout=RUN_S * 1000)
            code = page.locator(".jp-CodeCell").first
            code.wait_for(timeout=RUN_S * 1000)
            time.sleep(8)  # the kernel starts
            code.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            stats = page.locator(".sae-stats", has_text="density").first
            page.locator(".sae-message", has_text="updated in").first.wait_for(timeout=RUN_S * 1000)
            before = stats.inner_text()
            image_before = page.locator("img.sae-mask").first.get_attribute("src")
            slider = page.locator(".sae-random_blocks").first
            slider.scroll_into_view_if_needed()
            drag_slider(page, slider, 0.9)
            page.wait_for_function(
                "old => document.querySelector('.sae-stats').innerText !== old",
                arg=before,
                timeout=RUN_S * 1000,
            )
            image_after = page.locator("img.sae-mask").first.get_attribute("src")
            time.sleep(3)
            page.screenshot(path=str(ARTIFACTS / f"frontend_{app}.png"))
            readout = slider.locator(".widget-readout").inner_text()
            print(f"{app} OK: stats changed; image changed: {image_before != image_after}; "
                  f"random blocks now {readout}")  # fmt: skip
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    which = sys.argv[1:] or ["lab", "notebook"]
    if "lab" in which:
        run("lab", "/lab/tree/notebooks/06_mask_explorer.ipynb")
    if "notebook" in which:
        run("notebook", "/notebooks/notebooks/06_mask_explorer.ipynb")
