"""A real browser on the Gradio app: Debian chromium driven by PyPI playwright (never `playwright install`)."""

import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Debian chromium is not installed (apt-get install chromium)")


@contextmanager
def app_page(demo, height: int = 1000):
    """The launched ``demo`` open in a fresh headless chromium page (1280 x ``height``); both closed afterwards."""
    from playwright.sync_api import sync_playwright

    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(url, wait_until="domcontentloaded")
            yield page
            browser.close()
    finally:
        demo.close()
