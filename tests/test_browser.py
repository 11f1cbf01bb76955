"""A real browser (Debian chromium via PyPI playwright) types a prompt, clicks Generate and sees an image."""

import shutil

import pytest

from turbosample.web.app import build_demo

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")


def test_type_prompt_click_generate_see_image(tmp_path):
    from playwright.sync_api import sync_playwright

    demo = build_demo()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#prompt textarea").fill("smiling cat face")
            page.locator("#steps input[type=number]").fill("3")
            page.locator("#steps input[type=number]").press("Enter")
            page.locator("#generate").click()
            page.wait_for_function(
                "() => (document.querySelector('#status textarea')||{}).value?.startsWith('done')", timeout=120_000)
            image = page.locator("#gallery img").first
            image.wait_for(timeout=30_000)
            page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth > 0", timeout=30_000)
            assert image.evaluate("img => img.naturalWidth") == 64  # default size
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
