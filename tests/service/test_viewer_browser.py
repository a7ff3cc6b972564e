"""The viewer in a real browser: headless Chromium (Debian's package) driven by Selenium loads the
page from a running service, moves a slider, plays the orbit and fits an uploaded photo.

Without Chromium and its driver the test is skipped, unless DISTILL3D_REQUIRE_BROWSER=1 (CI sets
it, after installing them), where their absence fails. Nothing here downloads a browser: the
driver path is given explicitly and Selenium Manager runs offline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill3d.service.loadtest import spawn_service

CHROMIUM = Path(os.environ.get("DISTILL3D_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DISTILL3D_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(os.environ.get("DISTILL3D_TEST_ARTIFACTS", "test-artifacts"))


def _browser_or_skip():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        message = f"no browser for the viewer test: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("DISTILL3D_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return pytest.importorskip("selenium.webdriver")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,800",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_viewer_renders_follows_a_slider_plays_the_orbit_and_fits_a_photo(
    browser, checkpoints, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    args = ["--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]
    with spawn_service([*args, "--max-wait-ms", "5"], env={"DISTILL3D_INVERT_STEPS": "5"}) as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        view = browser.find_element(By.ID, "view")

        def renders() -> int:
            return int(view.get_attribute("data-renders") or 0)

        wait.until(lambda _: renders() >= 1)
        first_src, first_count = view.get_attribute("src"), renders()
        assert browser.execute_script("return arguments[0].naturalWidth", view) == 64
        stats = browser.find_element(By.ID, "stats")
        assert "torch" in stats.text and "ms" in stats.text  # backend and measured time shown

        yaw = browser.find_element(By.ID, "yaw")
        assert yaw.get_attribute("max") == "90"  # the widest loaded range (/v1/models: teacher)
        for _ in range(10):
            yaw.send_keys(Keys.ARROW_RIGHT)  # a user moving the slider with the keyboard
        wait.until(lambda _: renders() > first_count and view.get_attribute("src") != first_src)
        assert browser.find_element(By.ID, "yaw-value").text == "10°"

        browser.find_element(By.ID, "orbit-button").click()
        video = browser.find_element(By.ID, "orbit")
        playing = (
            "const v = arguments[0]; return v.readyState >= 2 && !v.paused && v.currentTime > 0"
        )
        wait.until(lambda _: browser.execute_script(playing, video))
        assert "frames" in browser.find_element(By.ID, "orbit-stats").text

        photo = tmp_path / "photo.png"
        Image.fromarray(np.full((80, 80, 3), 120, np.uint8)).save(photo)
        browser.find_element(By.ID, "photo").send_keys(str(photo))
        before = renders()
        browser.find_element(By.ID, "fit-button").click()
        status = browser.find_element(By.ID, "fit-status")
        wait.until(lambda _: "PSNR" in status.text)
        assert browser.find_element(By.ID, "identity-photo").is_selected()
        wait.until(lambda _: renders() > before)  # the fitted latent is rendered
        assert not browser.find_element(By.ID, "error").is_displayed()

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "viewer.png"
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
        shutil.copy(shot, tmp_path / "viewer.png")
