"""End to end in a real browser: `reidkit serve` as a subprocess on a free loopback port, Debian's chromium headless
driven through selenium with the system chromedriver (nothing is downloaded: the driver's path is given, so
selenium-manager never runs, and SE_OFFLINE is set). Upload a query and see the hits, open an identity's timeline,
verify two crops, browse clusters. Screenshots land in the test's tmp_path (bench/web_screenshots.py copies them
into docs/images/)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

selenium = pytest.importorskip("selenium", reason="selenium not installed")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"{CHROMIUM} / {CHROMEDRIVER} absent (Debian: apt-get install chromium chromium-driver; "
                "`scripts/setup.sh dev` does it)", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver import Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
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


def tiny_site(tmp_path: Path, tiny_market: Path, model: Path) -> dict:
    """An index of the tiny synthetic gallery, a fabricated track run and clusters (4 groups) of the gallery."""
    from reidkit.inference import build_extractor
    from reidkit.search.index import GalleryIndex
    from reidkit.search.sources import collect_items

    gallery = sorted((tiny_market / "bounding_box_test").glob("*.jpg"))
    GalleryIndex.build(tmp_path / "index", build_extractor(model, device="cpu"),
                       collect_items(tiny_market / "bounding_box_test"))
    make_run_folder(tmp_path / "run", gallery[:5])
    query = sorted((tiny_market / "query").glob("*.jpg"))[0]
    pid, cam = query.name.split("_")[:2]  # verify: the query and the same person seen by the other camera
    other = next(p for p in gallery if p.name.startswith(pid + "_") and p.name.split("_")[1] != cam)
    from PIL import Image

    scene = Image.new("RGB", (200, 120), (128, 128, 128))  # a "frame" holding the query crop at a known place
    scene.paste(Image.open(query).convert("RGB"), (80, 30))
    scene.save(tmp_path / "frame.png")
    crop_w, crop_h = Image.open(query).size
    return {"index": tmp_path / "index", "run": tmp_path / "run", "query": query, "pair": (query, other),
            "frame": tmp_path / "frame.png", "frame_box": (80, 30, 80 + crop_w, 30 + crop_h),
            "cluster_paths": gallery, "cluster_labels": [i % 4 for i in range(len(gallery))]}


def real_run_site(run: Path) -> dict:
    """A real `reidkit track` output folder: its tracklet gallery is the index, its crops the queries; clusters
    are its crops grouped by global id (a stand-in for `reidkit cluster` output)."""
    document = json.loads((run / "identities.json").read_text())
    tracklets = [(int(gid), cam, t) for gid, e in document["identities"].items()
                 for cam, ts in e["cameras"].items() for t in ts if t.get("crop")]
    by_gid: dict[int, list] = {}
    for gid, cam, t in tracklets:
        by_gid.setdefault(gid, []).append((cam, run / t["crop"]))
    seen_twice = [v for v in by_gid.values() if len({cam for cam, _ in v}) > 1] or list(by_gid.values())
    pair = (seen_twice[0][0][1], seen_twice[0][-1][1])
    sources = json.loads((run / "run.json").read_text())["sources"]  # frame folders (MOTChallenge SEQ/img1/)
    gid, cam, t = max(((g, c, t) for g, c, t in tracklets if t.get("best_frame_file")),
                      key=lambda gct: gct[2].get("best_score") or 0.0)  # the clearest view: a box inside the frame
    frame = Path(sources[[Path(s).name for s in sources].index(cam)]) / "img1" / t["best_frame_file"]
    return {"index": run / "gallery", "run": run, "query": pair[0], "pair": pair, "frame": frame.resolve(),
            "frame_box": tuple(round(v) for v in t["best_box"]),
            "cluster_paths": [run / t["crop"] for _, _, t in tracklets],
            "cluster_labels": [gid for gid, _, _ in tracklets]}


@pytest.fixture
def server(tmp_path, tiny_market, small_checkpoint):
    """`reidkit serve` over an index, a track run and clusters: by default the tiny synthetic gallery, a fabricated
    run and the untrained tiny CNN. bench/web_screenshots.py sets REIDKIT_WEB_TEST_MODEL (a trained model) and
    REIDKIT_WEB_TEST_RUN (a real `reidkit track` run) and REIDKIT_WEB_TEST_CLUSTERS (a real `reidkit cluster`
    output) so the documentation's screenshots show real results; the assertions read what to expect from the
    served files either way."""
    from reidkit.search.index import GalleryIndex

    model = Path(os.environ.get("REIDKIT_WEB_TEST_MODEL") or small_checkpoint)
    real_run = os.environ.get("REIDKIT_WEB_TEST_RUN")
    site = real_run_site(Path(real_run)) if real_run else tiny_site(tmp_path, tiny_market, model)
    clusters = Path(os.environ.get("REIDKIT_WEB_TEST_CLUSTERS") or tmp_path / "clusters")
    if "REIDKIT_WEB_TEST_CLUSTERS" in os.environ:  # a real `reidkit cluster` output folder
        with open(clusters / "clusters.csv", newline="") as fh:
            site["cluster_labels"] = [int(row["cluster"]) for row in csv.DictReader(fh)]
    else:
        clusters.mkdir()
        rows = "".join(f"{p},{c}\n" for p, c in zip(site["cluster_paths"], site["cluster_labels"]))
        (clusters / "clusters.csv").write_text("path,cluster\n" + rows)
    site["ids"] = set(GalleryIndex.load(site["index"], with_features=False).metadata.ids.tolist())
    site["identities"] = json.loads((site["run"] / "identities.json").read_text())["identities"]
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reidkit.cli", "serve", "--index", str(site["index"]),
                             "--tracks", str(site["run"]), "--clusters", str(clusters),
                             "--model", str(model), "--device", "cpu", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    site["url"] = f"http://127.0.0.1:{port}"
    try:
        site["health"] = wait_for_health(site["url"], proc)
        yield site
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
                 "--window-size=1200,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    driver = Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition, timeout: float = 30.0):
    """Poll `condition`; an element the page re-rendered between finding and reading it just means 'not yet'."""
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))


def images_loaded(driver, css: str) -> bool:
    """Every <img> under `css` has been fetched and decoded (its thumbnail URL answered with an image)."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", css)


def verify_two_crops(browser, pair: tuple[Path, Path], shots: Path) -> None:
    browser.find_element(By.ID, "verify-a").send_keys(str(pair[0]))
    browser.find_element(By.ID, "verify-b").send_keys(str(pair[1]))
    browser.find_element(By.ID, "verify-btn").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "verify-verdict") or d.find_element(By.ID, "error").text,
               timeout=60)
    assert not browser.find_element(By.ID, "error").text, browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "verify-verdict").text in ("same person", "different people")
    assert "threshold" in browser.find_element(By.ID, "verify-result").text
    browser.save_screenshot(str(shots / "web_verify.png"))


@pytest.mark.slow
def test_search_timeline_verify_clusters_in_chromium(server, browser, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(server["url"] + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "health").get_attribute("data-ready") == "1")
    assert f"{len(server['ids'])} items" in browser.find_element(By.ID, "health").text

    # search: pick a file -> ranked hits from the index with thumbnails, distances non-decreasing
    expected_hits = min(10, len(server["ids"]))
    browser.find_element(By.ID, "query-file").send_keys(str(server["query"]))
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) == expected_hits)
    wait_until(browser, lambda d: images_loaded(d, "#hits .hit img"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert [h.get_attribute("data-rank") for h in hits] == [str(r) for r in range(1, expected_hits + 1)]
    assert all(h.get_attribute("data-id") in server["ids"] for h in hits)
    distances = [float(h.text.split("d=")[1].split()[0]) for h in hits]
    assert distances == sorted(distances)
    browser.save_screenshot(str(shots / "web_search.png"))

    # a frame: draw a box around the person with the mouse -> that crop, at the frame's resolution, is the query
    searches = int(browser.find_element(By.ID, "hits").get_attribute("data-searches"))
    browser.find_element(By.ID, "frame-file").send_keys(str(server["frame"]))
    canvas = browser.find_element(By.ID, "frame-canvas")
    wait_until(browser, lambda d: canvas.is_displayed() and int(canvas.get_attribute("width")) > 0)
    from PIL import Image

    frame_w = Image.open(server["frame"]).size[0]
    scale = int(canvas.get_attribute("width")) / frame_w
    x1, y1, x2, y2 = (v * scale for v in server["frame_box"])
    cw, ch = int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))
    ActionChains(browser).move_to_element_with_offset(canvas, int(x1 - cw / 2), int(y1 - ch / 2)).click_and_hold() \
        .move_by_offset(int(x2 - x1), int(y2 - y1)).release().perform()
    box_w, box_h = server["frame_box"][2] - server["frame_box"][0], server["frame_box"][3] - server["frame_box"][1]
    hits_box = browser.find_element(By.ID, "hits")
    wait_until(browser, lambda d: int(hits_box.get_attribute("data-searches")) > searches)
    assert hits_box.get_attribute("data-query") == "box.png"
    title = browser.find_element(By.ID, "hits-title").text
    got_w, got_h = (int(v) for v in title.split("for a ")[1].split(" crop")[0].split("x"))
    assert abs(got_w - box_w) <= 3 / scale and abs(got_h - box_h) <= 3 / scale, (title, box_w, box_h)
    wait_until(browser, lambda d: images_loaded(d, "#hits .hit img"))
    browser.save_screenshot(str(shots / "web_frame_box.png"))

    # a gallery item as the query: it comes back first, framed as the same identity
    pick = browser.find_elements(By.CSS_SELECTOR, "#gallery-pick .pick")[1]
    picked = pick.get_attribute("data-id")
    pick.click()
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#hits .hit").get_attribute("data-id") == picked)
    assert "good" in browser.find_element(By.CSS_SELECTOR, "#hits .hit").get_attribute("class")

    # identities: the one with most tracklets -> one bar per tracklet on its camera lanes, with their crops
    browser.find_element(By.ID, "tab-identities").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".identity")) == len(server["identities"]))
    gid, entry = max(server["identities"].items(), key=lambda kv: sum(len(t) for t in kv[1]["cameras"].values()))
    tracklets = sum(len(t) for t in entry["cameras"].values())
    browser.find_element(By.CSS_SELECTOR, f'.identity[data-gid="{gid}"]').click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.tracklet")) == tracklets)
    wait_until(browser, lambda d: images_loaded(d, "#timeline-crops img"))
    assert f"identity {gid}" in browser.find_element(By.ID, "timeline-title").text
    browser.save_screenshot(str(shots / "web_timeline.png"))

    # verify two crops of one person seen by two cameras (reidkit.analysis.verify, when this build has it)
    browser.find_element(By.ID, "tab-verify").click()
    if server["health"]["verify"]:
        verify_two_crops(browser, server["pair"], shots)
    else:
        warnings.warn("verification not in this build (reidkit.analysis.verify): the verify step was not run",
                      stacklevel=1)

    # clusters: one card per cluster; the largest one's members all load
    labels = server["cluster_labels"]
    browser.find_element(By.ID, "tab-clusters").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cluster")) == len(set(labels)))
    largest = max(set(labels), key=lambda c: (labels.count(c), -c))
    browser.find_element(By.CSS_SELECTOR, f'.cluster[data-cluster="{largest}"]').click()
    wait_until(browser, lambda d: images_loaded(d, "#cluster-members img"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cluster-members img")) == labels.count(largest)
    browser.save_screenshot(str(shots / "web_clusters.png"))

    # failures: the worst leave-one-out queries, each with its ranked hits framed green / red
    browser.find_element(By.ID, "tab-failures").click()
    wait_until(browser, lambda d: "rank-1" in d.find_element(By.ID, "failure-summary").text)
    rows = browser.find_elements(By.CSS_SELECTOR, "#failure-rows .failure")
    expected_rows = min(20, int(browser.find_element(By.ID, "failure-summary").text.split(" failures")[0].split()[-1]))
    assert len(rows) == expected_rows
    if rows:  # a failure's first hit is by definition another identity
        assert "bad" in rows[0].find_elements(By.CSS_SELECTOR, ".grid .card")[0].get_attribute("class")
        wait_until(browser, lambda d: images_loaded(d, "#failure-rows img"))
    browser.save_screenshot(str(shots / "web_failures.png"))

    # bad input in the page: a text file as the query -> the API's 415 message is shown
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    browser.find_element(By.ID, "tab-search").click()
    browser.find_element(By.ID, "query-file").send_keys(str(bad))
    wait_until(browser, lambda d: "415" in d.find_element(By.ID, "error").text)
    assert "not an image" in browser.find_element(By.ID, "error").text
