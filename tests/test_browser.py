"""A real browser (Debian chromium via PyPI playwright) types a prompt, clicks Generate and sees an image."""

from browser_app import app_page, needs_chromium

from turbosample.web.app import build_demo

pytestmark = needs_chromium


def test_type_prompt_click_generate_see_image(tmp_path):
    with app_page(build_demo()) as page:
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


# Gradio's "Error" badge over a component (what a failed or cancelled event leaves on its outputs)
VISIBLE_ERROR_BADGES = """() => [...document.querySelectorAll('.block .error')].filter(
    e => e.textContent.trim() === 'Error'
         && e.checkVisibility({opacityProperty: true, visibilityProperty: true})).length"""


def test_stop_says_where_it_stopped_and_a_plain_png_is_named_by_its_file(tmp_path):
    from PIL import Image

    plain = tmp_path / "holiday photo.png"
    Image.new("RGB", (8, 8)).save(plain)
    with app_page(build_demo()) as page:
        page.locator("#steps input[type=number]").fill("1000")
        page.locator("#steps input[type=number]").press("Enter")
        page.locator("#seed textarea, #seed input").first.fill("18446744073709551615")
        page.locator("#generate").click()
        page.wait_for_function(
            "() => (document.querySelector('#status textarea')||{}).value?.startsWith('step ')", timeout=120_000)
        page.locator("#stop").click()
        page.wait_for_function(
            "() => (document.querySelector('#status textarea')||{}).value?.startsWith('stopped at step ')",
            timeout=30_000)
        status = page.locator("#status textarea").input_value()
        assert status.endswith("/1000; no image saved"), status
        page.wait_for_timeout(1500)  # nothing overwrites it afterwards
        assert page.locator("#status textarea").input_value() == status
        page.screenshot(path=str(tmp_path / "after_stop.png"), full_page=True)
        assert page.evaluate(VISIBLE_ERROR_BADGES) == 0  # no output marked failed by the stop
        page.locator("#load_workflow input[type=file], input[type=file]").first.set_input_files(str(plain))
        toast = page.get_by_text("holiday photo.png carries no ComfyUI workflow")
        toast.first.wait_for(timeout=30_000)
        assert "gradio" not in toast.first.inner_text().lower()
        page.wait_for_timeout(500)
        assert page.evaluate(VISIBLE_ERROR_BADGES) == 0  # a toast; the controls keep their values
        page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
