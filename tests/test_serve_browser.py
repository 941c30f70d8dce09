"""The demo page in a real browser: Debian's headless chromium driven by selenium, against
the service on 127.0.0.1 (a uvicorn server in a thread). Nothing is downloaded.

Uploads a generated mp4, checks the ranked rows, plays the first moment (the audio element
plays and lasts end - start), uploads a file that is not a video and sees the error. With
``MGSV_SCREENSHOT=PATH`` (e.g. ``docs/images/serve_demo.png``) it saves a screenshot of the
page with its results there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install "
                "chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("selenium")
pytest.importorskip("fastapi")
pytest.importorskip("av")

import httpx  # noqa: E402
from _serve import ThreadedServer, fixture_dir  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from mgsv_sk.serve import ServeConfig, ServedModel, create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fx = fixture_dir(tmp_path_factory)
    model = ServedModel.load(fx / "bundle", fx / "catalogue")
    with ThreadedServer(create_app(model, config=ServeConfig(workers=2))) as running:
        running.fixture = fx  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1400",
                 "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_upload_rank_play_and_error_in_the_page(server, browser):
    fx = server.fixture
    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    wait.until(lambda d: "ready" in d.find_element(By.ID, "status").text)
    assert "up to 60 s" in browser.find_element(By.ID, "limits").text  # the cap, stated

    Select(browser.find_element(By.ID, "moments")).select_by_visible_text("2")
    browser.find_element(By.ID, "file-input").send_keys(str(fx / "query.mp4"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .track")) > 0)
    with open(fx / "query.mp4", "rb") as fh:
        want = httpx.post(f"{server.url}/v1/recommend", params={"k": 5, "moments_per_track": 2},
                          files={"video": ("query.mp4", fh, "video/mp4")}).json()["tracks"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .track")
    assert [r.find_element(By.CSS_SELECTOR, ".music-id").text for r in rows] == [
        t["music_id"] for t in want]
    assert [r.find_element(By.CSS_SELECTOR, ".rank").text for r in rows] == [
        str(t["rank"]) for t in want]
    assert [len(r.find_elements(By.CSS_SELECTOR, ".timeline .segment")) for r in rows] == [
        len(t["moments"]) for t in want]

    first = rows[0]
    button = first.find_element(By.CSS_SELECTOR, ".moment-play")
    start, end = float(button.get_attribute("data-start")), float(button.get_attribute("data-end"))
    button.click()
    audio = first.find_element(By.CSS_SELECTOR, "audio.track-audio")
    wait.until(lambda d: d.execute_script(
        "const a = arguments[0]; return !a.paused && a.currentTime > 0.2;", audio))
    duration = browser.execute_script("return arguments[0].duration;", audio)
    assert duration == pytest.approx(round(end, 3) - round(start, 3), abs=0.05)
    assert "/v1/tracks/" in audio.get_attribute("src")

    target = os.environ.get("MGSV_SCREENSHOT")
    if target:
        browser.execute_script("window.scrollTo(0, 0);")
        height = browser.execute_script("return document.documentElement.scrollHeight;")
        browser.set_window_size(1100, min(max(900, height + 140), 2200))
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(path.with_suffix(".tmp.png")))
        shutil.move(str(path.with_suffix(".tmp.png")), path)

    browser.find_element(By.ID, "file-input").send_keys(str(fx / "notes.txt"))
    error = wait.until(lambda d: d.find_element(By.ID, "error") if d.find_element(
        By.ID, "error").is_displayed() else False)
    assert "not a video" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .track")
