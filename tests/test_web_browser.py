"""End to end in a real browser: `reidkit serve` as a subprocess on a free loopback port, Debian's chromium headless
driven through selenium with the system chromedriver (nothing is downloaded: the driver's path is given, so
selenium-manager never runs, and SE_OFFLINE is set). Upload a query and see the hits, open an identity's timeline,
verify two crops, browse clusters. Screenshots land in the test's tmp_path (bench/web_screenshots.py copies them
into docs/images/)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

selenium = pytest.importorskip("selenium", reason="selenium not installed")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"{CHROMIUM} / {CHROMEDRIVER} absent (Debian: apt-get install chromium chromium-driver; "
                "`scripts/setup.sh dev` does it)", allow_module_level=True)

from selenium.webdriver import Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from test_web_api import make_run_folder  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"reidkit serve exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"reidkit serve did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def server(tmp_path, tiny_market, small_checkpoint):
    """`reidkit serve` over an index of the tiny gallery, a fabricated track run and a clusters folder. The model
    is the untrained tiny CNN, or REIDKIT_WEB_TEST_MODEL (bench/web_screenshots.py passes a trained one so the
    documentation's screenshots show meaningful scores)."""
    from reidkit.inference import build_extractor
    from reidkit.search.index import GalleryIndex
    from reidkit.search.sources import collect_items

    model = Path(os.environ.get("REIDKIT_WEB_TEST_MODEL") or small_checkpoint)
    gallery = sorted((tiny_market / "bounding_box_test").glob("*.jpg"))
    GalleryIndex.build(tmp_path / "index", build_extractor(model, device="cpu"),
                       collect_items(tiny_market / "bounding_box_test"))
    make_run_folder(tmp_path / "run", gallery[:5])
    (tmp_path / "clusters").mkdir()
    rows = "".join(f"{p},{i % 4}\n" for i, p in enumerate(gallery))
    (tmp_path / "clusters" / "clusters.csv").write_text("path,cluster\n" + rows)
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reidkit.cli", "serve", "--index", str(tmp_path / "index"),
                             "--tracks", str(tmp_path / "run"), "--clusters", str(tmp_path / "clusters"),
                             "--model", str(model), "--device", "cpu", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(url, proc)
        yield {"url": url, "health": health, "gallery": gallery, "query": sorted((tiny_market / "query").glob("*.jpg"))}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), proc.stderr.read().decode()  # stopped by us, not crashed


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never fetch a driver or a browser
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,820", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    driver = Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition, timeout: float = 30.0):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def images_loaded(driver, css: str) -> bool:
    """Every <img> under `css` has been fetched and decoded (its thumbnail URL answered with an image)."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", css)


@pytest.mark.slow
def test_search_timeline_verify_clusters_in_chromium(server, browser, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(server["url"] + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "health").get_attribute("data-ready") == "1")
    assert f"{len(server['gallery'])} items" in browser.find_element(By.ID, "health").text

    # search: pick a file -> 10 ranked hits with thumbnails, distances non-decreasing
    query = server["query"][0]
    browser.find_element(By.ID, "query-file").send_keys(str(query))
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) == 10)
    wait_until(browser, lambda d: images_loaded(d, "#hits .hit img"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert [h.get_attribute("data-rank") for h in hits] == [str(r) for r in range(1, 11)]
    gallery_ids = {str(p) for p in server["gallery"]}
    assert all(h.get_attribute("data-id") in gallery_ids for h in hits)
    distances = [float(h.text.split("d=")[1].split()[0]) for h in hits]
    assert distances == sorted(distances)
    browser.save_screenshot(str(shots / "web_search.png"))

    # a gallery item as the query: it comes back first (green: same identity)
    pick = browser.find_elements(By.CSS_SELECTOR, "#gallery-pick .pick")[3]
    picked = pick.get_attribute("data-id")
    pick.click()
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#hits .hit").get_attribute("data-id") == picked)
    assert "good" in browser.find_element(By.CSS_SELECTOR, "#hits .hit").get_attribute("class")

    # identities: open identity 1 -> its timeline has 3 tracklets on 2 camera lanes, with their crops
    browser.find_element(By.ID, "tab-identities").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".identity")) == 2)
    browser.find_element(By.CSS_SELECTOR, '.identity[data-gid="1"]').click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.tracklet")) == 3)
    wait_until(browser, lambda d: images_loaded(d, "#timeline-crops img"))
    assert "identity 1" in browser.find_element(By.ID, "timeline-title").text
    browser.save_screenshot(str(shots / "web_timeline.png"))

    # verify two crops: the query and a gallery crop of the same person seen by the other camera
    browser.find_element(By.ID, "tab-verify").click()
    pid, cam = query.name.split("_")[:2]
    other = next(p for p in server["gallery"] if p.name.startswith(pid + "_") and p.name.split("_")[1] != cam)
    browser.find_element(By.ID, "verify-a").send_keys(str(query))
    browser.find_element(By.ID, "verify-b").send_keys(str(other))
    browser.find_element(By.ID, "verify-btn").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "verify-verdict") or d.find_element(By.ID, "error").text,
               timeout=60)
    assert not browser.find_element(By.ID, "error").text, browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "verify-verdict").text in ("same person", "different people")
    assert "threshold" in browser.find_element(By.ID, "verify-result").text
    browser.save_screenshot(str(shots / "web_verify.png"))

    # clusters: 4 clusters; open one, its members' crops load
    browser.find_element(By.ID, "tab-clusters").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cluster")) == 4)
    browser.find_element(By.CSS_SELECTOR, '.cluster[data-cluster="2"]').click()
    wait_until(browser, lambda d: images_loaded(d, "#cluster-members img"))
    expected = sum(1 for i in range(len(server["gallery"])) if i % 4 == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cluster-members img")) == expected
    browser.save_screenshot(str(shots / "web_clusters.png"))

    # bad input in the page: a text file as the query -> the API's 415 message is shown, no hits change
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    browser.find_element(By.ID, "tab-search").click()
    browser.find_element(By.ID, "query-file").send_keys(str(bad))
    wait_until(browser, lambda d: "415" in d.find_element(By.ID, "error").text)
    assert "not an image" in browser.find_element(By.ID, "error").text
