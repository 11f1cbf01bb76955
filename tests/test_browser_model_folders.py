"""A real browser picks a Wan model folder in the Model dropdown, generates, and the video plays in the player."""

import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from turbosample.nodes import model_folders  # noqa: E402
from turbosample.nodes.pipeline import RunOptions  # noqa: E402
from turbosample.web.app import build_demo  # noqa: E402

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")


def test_pick_a_video_model_generate_and_play_it(model_root, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("TURBOSAMPLE_MAGCACHE_DIR", str(tmp_path))
    model_folders.configure(model_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = build_demo(options=RunOptions("cpu", "bf16", False))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(url, wait_until="domcontentloaded")
            assert not page.locator("#frames").is_visible()  # the built-in model makes images
            page.locator("#model input").click()
            page.locator("ul[role=listbox] li", has_text="wan21").first.click()
            page.wait_for_function("() => document.querySelector('#model_info')?.innerText.includes('4k+1 frames')")
            assert page.locator("#frames").is_visible()
            for control, value in (("width", "64"), ("height", "48"), ("steps", "4"), ("frames", "9")):
                page.locator(f"#{control} input[type=number]").fill(value)
                page.locator(f"#{control} input[type=number]").press("Enter")
            page.locator("#generate").click()
            page.wait_for_function("() => (document.querySelector('#status textarea')||{}).value?.includes("
                                   "'video(s) of 9 frames')", timeout=120_000)
            page.wait_for_function("() => (document.querySelector('#video video')||{}).readyState >= 2",
                                   timeout=30_000)
            width, duration = page.evaluate("() => { const v = document.querySelector('#video video'); "
                                            "return [v.videoWidth, v.duration]; }")
            assert width == 64 and abs(duration - 9 / 16) < 0.05  # 9 frames at Wan's 16 fps
            page.screenshot(path=str(tmp_path / "wan.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
        torch.set_num_threads(threads)
        model_folders.configure(None)
