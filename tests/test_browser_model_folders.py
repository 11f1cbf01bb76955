"""A real browser picks a Wan model folder in the Model dropdown, generates, and the video plays in the player."""

import pytest
from browser_app import app_page, needs_chromium

pytest.importorskip("diffusers")

from turbosample.nodes import model_folders  # noqa: E402
from turbosample.nodes.pipeline import RunOptions  # noqa: E402
from turbosample.web.app import build_demo  # noqa: E402

pytestmark = [needs_chromium, pytest.mark.usefixtures("one_thread")]  # one thread: tiny models


def test_pick_a_video_model_generate_and_play_it(model_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TURBOSAMPLE_MAGCACHE_DIR", str(tmp_path))
    model_folders.configure(model_root)
    try:
        with app_page(build_demo(options=RunOptions("cpu", "bf16", False)), height=1200) as page:
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
    finally:
        model_folders.configure(None)
