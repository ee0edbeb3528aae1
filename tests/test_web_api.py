"""The web app's JSON API (reidkit.web) through FastAPI's TestClient, on a tiny index built from synthetic crops.

References are independent of the app: distances recomputed from features the extractor gives for the same files,
counts from the files and the fabricated run / clusters folders, file bytes from the disk."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from reidkit.web.app import WebConfig, create_app, is_loopback  # noqa: E402
from reidkit.web.sources import RunFolder  # noqa: E402

# ------------------------------------------------------------------------------------------------ fixtures

def make_run_folder(root: Path, crops: list[Path]) -> dict:
    """A `reidkit track` output folder as its writer lays it out (video/outputs.py): identities.json in format
    reidkit-identities-1, best crops under crops/, a timeline.png. Two identities: 1 seen by cam1 twice and cam2
    once, 2 seen by cam2 only."""
    (root / "crops").mkdir(parents=True)
    plan = [(1, "cam1", 1, 0.0, 2.0, crops[0]), (1, "cam1", 4, 10.0, 12.5, crops[1]),
            (1, "cam2", 2, 5.0, 7.0, crops[2]), (2, "cam2", 3, 1.0, 3.0, crops[3])]
    identities: dict = {}
    for gid, camera, track, start, end, crop in plan:
        name = f"crops/{gid:04d}_c{camera[-1]}_t{track:05d}_f{int(start * 10) + 1:06d}.jpg"
        shutil.copy(crop, root / name)
        entry = identities.setdefault(str(gid), {"first_seen": start, "last_seen": end, "boxes": 0, "cameras": {}})
        entry["first_seen"], entry["last_seen"] = min(entry["first_seen"], start), max(entry["last_seen"], end)
        entry["boxes"] += 10
        entry["cameras"].setdefault(camera, []).append(
            {"track": track, "start": start, "end": end, "first_frame": int(start * 10) + 1,
             "last_frame": int(end * 10) + 1, "boxes": 10, "best_frame": int(start * 10) + 1,
             "best_frame_file": None, "best_box": [1.0, 2.0, 30.0, 60.0], "best_score": 0.5 + track / 10,
             "crop": name})
    document = {"format": "reidkit-identities-1", "complete": True,
                "cameras": [{"name": "cam1"}, {"name": "cam2"}], "association": {}, "num_identities": 2,
                "num_tracklets": len(plan), "identities": identities}
    (root / "identities.json").write_text(json.dumps(document))
    (root / "run.json").write_text("{}")
    shutil.copy(crops[4], root / "timeline.png")  # any image: the app only serves it
    return document


@pytest.fixture
def site(tmp_path, tiny_market, small_checkpoint):
    """Index of the tiny gallery, a fabricated track run, a clusters folder, the extractor, and the config."""
    from reidkit.inference import build_extractor
    from reidkit.search.index import GalleryIndex
    from reidkit.search.sources import collect_items

    gallery = sorted((tiny_market / "bounding_box_test").glob("*.jpg"))
    extractor = build_extractor(small_checkpoint, device="cpu")
    GalleryIndex.build(tmp_path / "index", extractor, collect_items(tiny_market / "bounding_box_test"))
    run = tmp_path / "run"
    document = make_run_folder(run, gallery[:5])
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    labels = [i % 3 - 1 for i in range(len(gallery))]  # clusters -1, 0, 1
    with open(clusters / "clusters.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "cluster"])
        writer.writerows([str(p), c] for p, c in zip(gallery, labels))
    config = WebConfig(index=tmp_path / "index", tracks=run, clusters=clusters, model=small_checkpoint)
    return {"config": config, "gallery": gallery, "extractor": extractor, "run": run, "document": document,
            "labels": labels, "query": sorted((tiny_market / "query").glob("*.jpg"))}


@pytest.fixture
def client(site):
    return TestClient(create_app(site["config"]))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


# ------------------------------------------------------------------------------------------------ search

def test_health_describes_what_is_served(client, site):
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["index"]["count"] == len(site["gallery"])
    assert body["tracks"] and body["clusters"] and not body["auth"]
    assert body["verify"] == (importlib.util.find_spec("reidkit.analysis.verify") is not None)


def test_search_by_upload_ranks_like_a_naive_loop(client, site):
    query = site["query"][0]
    response = client.post("/api/search", files=upload(query), data={"top_k": "7"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    # reference: the extractor on the files themselves, cosine distance by a plain loop
    ext = site["extractor"]
    q = ext.embed([str(query)])[0].astype(np.float64)
    g = ext.embed([str(p) for p in site["gallery"]]).astype(np.float64)
    expected = sorted((1.0 - float(np.dot(q, g[i]) / np.linalg.norm(q) / np.linalg.norm(g[i])), str(p))
                      for i, p in enumerate(site["gallery"]))[:7]
    assert [h["rank"] for h in hits] == list(range(1, 8))
    assert [h["id"] for h in hits] == [p for _, p in expected]
    assert np.allclose([h["distance"] for h in hits], [d for d, _ in expected], atol=1e-4)
    first = hits[0]
    name = Path(first["id"]).name  # Market name: pid_c<cam>s1_<frame>_00.jpg
    assert first["pid"] == int(name.split("_")[0]) and first["camera"] == f"c{name.split('_')[1][1]}"
    assert first["name"] == name and "/" not in first["name"]
    image = client.get(first["thumb"])
    assert image.status_code == 200 and image.content == Path(first["id"]).read_bytes()


def test_search_by_item_finds_itself_first(client, site):
    item = str(site["gallery"][5])
    hits = client.post("/api/search", data={"item": item, "top_k": "3"}).json()["hits"]
    assert hits[0]["id"] == item and abs(hits[0]["distance"]) < 1e-5


def test_items_page_lists_the_gallery(client, site):
    page = client.get("/api/items", params={"offset": 2, "limit": 5}).json()
    assert page["total"] == len(site["gallery"])
    assert [i["id"] for i in page["items"]] == [str(p) for p in site["gallery"][2:7]]


def test_failures_match_a_naive_leave_one_out(client, site):
    """Each labelled item queries the others, Market-style; reference: a plain loop over files and names."""
    body = client.get("/api/failures", params={"limit": 200}).json()
    paths = [str(p) for p in site["gallery"]]
    feats = site["extractor"].embed(paths).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    pid = [int(Path(p).name.split("_")[0]) for p in paths]
    cam = [int(Path(p).name.split("_")[1][1]) for p in paths]
    failing, correct = {}, 0
    queries = [i for i in range(len(paths)) if pid[i] != 0]  # Market: 0000 = distractor, never a query
    assert 0 < len(queries) < len(paths)
    for i in queries:
        ranked = sorted((1.0 - float(feats[i] @ feats[j]), j) for j in range(len(paths))
                        if j != i and not (pid[j] == pid[i] and cam[j] == cam[i]))[:10]
        if pid[ranked[0][1]] == pid[i]:
            correct += 1
        else:
            failing[paths[i]] = [paths[j] for _, j in ranked]
    assert body["queries"] == len(queries)
    assert abs(body["rank1"] - correct / len(queries)) < 1e-9 and failing
    assert {row["query"]["id"]: [h["id"] for h in row["hits"]] for row in body["rows"]} == failing
    for row in body["rows"]:
        flags = [h["correct"] for h in row["hits"]]
        assert flags[0] is False
        assert row["first_correct_rank"] == (flags.index(True) + 1 if True in flags else None)


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case", ["too_large", "not_an_image", "gif", "truncated", "bomb", "empty", "no_query",
                                  "both", "unknown_item", "top_k_zero", "top_k_huge"])
def test_bad_search_inputs_get_the_right_status(site, case):
    site["config"].max_upload_bytes = 4096
    client = TestClient(create_app(site["config"]))
    jpeg = site["query"][0].read_bytes()
    assert len(jpeg) < 4096
    import io

    from PIL import Image

    gif = io.BytesIO()
    Image.new("RGB", (8, 16)).save(gif, format="GIF")
    cases = {
        "too_large": ({"files": {"image": ("big.jpg", jpeg + b"\0" * 4096, "image/jpeg")}}, 413, "above the limit"),
        "not_an_image": ({"files": {"image": ("x.jpg", b"hello, not pixels", "image/jpeg")}}, 415, "not an image"),
        "gif": ({"files": {"image": ("x.gif", gif.getvalue(), "image/gif")}}, 415, "GIF"),
        "truncated": ({"files": {"image": ("t.jpg", jpeg[:len(jpeg) // 2], "image/jpeg")}}, 400, "image"),
        "bomb": ({"files": {"image": ("b.png", png_header(30000, 30000), "image/png")}}, 400, "decompression bomb"),
        "empty": ({"files": {"image": ("e.jpg", b"", "image/jpeg")}}, 400, "empty"),
        "no_query": ({"data": {"top_k": "3"}}, 400, "exactly one"),
        "both": ({"files": {"image": ("q.jpg", jpeg, "image/jpeg")}, "data": {"item": "x"}}, 400, "exactly one"),
        "unknown_item": ({"data": {"item": "/etc/passwd"}}, 404, "not in the index"),
        "top_k_zero": ({"data": {"item": str(site["gallery"][0]), "top_k": "0"}}, 422, "top_k"),
        "top_k_huge": ({"data": {"item": str(site["gallery"][0]), "top_k": "101"}}, 422, "top_k"),
    }
    kwargs, status, words = cases[case]
    response = client.post("/api/search", **kwargs)
    assert response.status_code == status, response.text
    assert words in response.text


def test_decoder_refuses_a_bomb_under_the_server_limit(site):
    """With --max-pixels above PIL's limit the server's header check lets it through; THE decoder
    (data.images.read_image) then refuses it, and the API says so with 400, naming the field."""
    from PIL import Image

    site["config"].max_pixels = 10 * Image.MAX_IMAGE_PIXELS
    client = TestClient(create_app(site["config"]))
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)  # between PIL's limit and twice it: PIL itself only warns
    response = client.post("/api/search", files={"image": ("b.png", png_header(side, side), "image/png")})
    assert response.status_code == 400
    assert "decompression bomb" in response.json()["detail"] and response.json()["detail"].startswith("cannot read "
                                                                                                       "image image")


def test_a_declared_body_above_the_limit_is_refused_unread(site):
    site["config"].max_upload_bytes = 1000
    client = TestClient(create_app(site["config"]))
    body = b"x" * 200_000  # above 2 crops + the multipart envelope: refused by the body limit, before parsing
    response = client.post("/api/search", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "above the limit" in response.json()["detail"]


# ------------------------------------------------------------------------------------------------ files

@pytest.mark.parametrize("url", [
    "/api/run/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/api/run/..%2f..%2f..%2fetc%2fpasswd", "/api/run/%2fetc%2fpasswd",
    "/api/run/identities.json", "/api/run/crops/missing.jpg", "/api/run/outside.jpg", "/api/run/crops%00.jpg",
    "/api/thumb/%2fetc%2fpasswd", "/api/thumb/..%2f..%2fetc%2fpasswd", "/api/cluster_thumb/-1",
    "/api/cluster_thumb/99999", "/api/identities/999", "/api/clusters/77"])
def test_no_request_path_reaches_the_filesystem(client, site, url, tmp_path):
    outside = tmp_path / "secret.jpg"
    shutil.copy(site["gallery"][0], outside)
    (site["run"] / "outside.jpg").symlink_to(outside)  # a link out of the run folder is not followed
    response = client.get(url)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert response.content != outside.read_bytes()


def test_run_folder_resolution_stays_inside(site, tmp_path):
    shutil.copy(site["gallery"][0], tmp_path / "secret.jpg")
    run = RunFolder(site["run"])
    crop = site["document"]["identities"]["1"]["cameras"]["cam1"][0]["crop"]
    assert run.file(crop) == (site["run"] / crop).resolve()
    assert run.file(f"crops/../{crop}") == (site["run"] / crop).resolve()  # inside after resolution: fine
    for bad in ("../secret.jpg", str(tmp_path / "secret.jpg"), "/etc/passwd", "../../../../etc/passwd",
                "identities.json", "", "crops"):
        assert run.file(bad) is None, bad


# ------------------------------------------------------------------------------------------------ run, clusters

def test_identities_and_timeline(client, site):
    body = client.get("/api/identities").json()
    assert body["num_identities"] == 2 and body["cameras"] == ["cam1", "cam2"]
    first = next(i for i in body["identities"] if i["gid"] == 1)
    assert first["cameras"] == ["cam1", "cam2"] and first["tracklets"] == 3
    assert first["first_seen"] == 0.0 and first["last_seen"] == 12.5
    # best crop: highest best_score = the highest track number of identity 1 (track 4)
    assert "t00004" in first["crop"]
    assert client.get(first["crop"]).content == site["gallery"][1].read_bytes()
    assert client.get(body["timeline"]).status_code == 200
    one = client.get("/api/identities/1").json()
    assert [c["camera"] for c in one["cameras"]] == ["cam1", "cam2"]
    assert [t["start"] for t in one["cameras"][0]["tracklets"]] == [0.0, 10.0]
    assert client.get("/api/identities/abc").status_code == 422


def test_clusters_browse(client, site):
    body = client.get("/api/clusters").json()
    counts = Counter(site["labels"])
    assert body["total"] == len(counts) and body["images"] == len(site["gallery"])
    assert {c["cluster"]: c["size"] for c in body["clusters"]} == dict(counts)
    assert body["clusters"][-1]["cluster"] == -1  # unassigned last
    members = client.get("/api/clusters/0").json()["members"]
    expected_rows = [i for i, c in enumerate(site["labels"]) if c == 0]
    assert [m["row"] for m in members] == expected_rows
    assert client.get(members[0]["thumb"]).content == site["gallery"][expected_rows[0]].read_bytes()


def test_cluster_paths_relative_to_the_current_folder_or_the_cluster_folder(site, tmp_path, monkeypatch):
    """`reidkit cluster` writes paths as it was given them: relative ones resolve from the current folder first."""
    crops, folder = tmp_path / "crops", tmp_path / "out"
    (folder / "inner").mkdir(parents=True)
    crops.mkdir()
    shutil.copy(site["gallery"][0], crops / "a.jpg")
    shutil.copy(site["gallery"][1], folder / "inner" / "b.jpg")
    (folder / "clusters.csv").write_text("path,cluster\ncrops/a.jpg,0\ninner/b.jpg,0\nnowhere/c.jpg,1\n")
    monkeypatch.chdir(tmp_path)
    site["config"].clusters = folder
    client = TestClient(create_app(site["config"]))
    assert client.get("/api/cluster_thumb/0").content == site["gallery"][0].read_bytes()
    assert client.get("/api/cluster_thumb/1").content == site["gallery"][1].read_bytes()
    assert client.get("/api/cluster_thumb/2").status_code == 404


# ------------------------------------------------------------------------------------------------ verify

def test_verify_two_crops(client, site):
    pytest.importorskip("reidkit.analysis.verify", reason="reidkit.analysis.verify not in this build")
    a, b = site["query"][0], site["gallery"][3]
    response = client.post("/api/verify", files={"a": (a.name, a.read_bytes()), "b": (b.name, b.read_bytes())})
    assert response.status_code == 200, response.text
    result = response.json()
    fa, fb = site["extractor"].embed([str(a), str(b)]).astype(np.float64)
    assert abs(result["score"] - float(fa @ fb)) < 1e-4  # an uncalibrated embedding model: cosine similarity
    assert result["same"] == (result["score"] > result["threshold"])
    same = client.post("/api/verify", files={"a": (a.name, a.read_bytes()), "b": (a.name, a.read_bytes())}).json()
    assert same["same"] and any("identical" in note for note in same["notes"])
    bad = client.post("/api/verify", files={"a": ("a.jpg", b"nope"), "b": (b.name, b.read_bytes())})
    assert bad.status_code == 415 and bad.json()["detail"].startswith("a:")


def test_the_api_docs_page_works_offline(client):
    """/docs loads Swagger UI from this server (the swagger-ui-bundle files), never from a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    page = client.get("/docs")
    assert page.status_code == 200
    scripts = re.findall(r'<script src="([^"]+)"', page.text) + re.findall(r'<link [^>]*href="([^"]+)"', page.text)
    assert scripts and all(url.startswith("/docs-assets/") for url in scripts), scripts
    served = client.get("/docs-assets/swagger-ui-bundle.js")
    assert served.status_code == 200
    assert served.content == (Path(swagger_ui_path) / "swagger-ui-bundle.js").read_bytes()
    assert client.get("/docs-assets/../app.py").status_code == 404


# ------------------------------------------------------------------------------------------------ token

def test_token_is_required_on_every_request(site):
    site["config"].token = "s3cret-token"
    client = TestClient(create_app(site["config"]))
    for url in ("/", "/api/health", "/docs", "/openapi.json", "/api/identities"):
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403, url
    assert client.post("/api/search", data={"item": str(site["gallery"][0])}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/api/health", params={"token": "s3cret-token"}).status_code == 200
    page = client.get("/", params={"token": "s3cret-token"})
    assert page.status_code == 200 and "reidkit_token" in page.headers["set-cookie"]
    assert client.get("/api/identities").status_code == 200  # the cookie the page set
    assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.1") and is_loopback("::1")


def test_serve_refuses_unsafe_or_broken_settings(site, tmp_path, capsys):
    from reidkit.cli.main import main

    base = ["serve", "--index", str(site["config"].index), "--model", str(site["config"].model), "--port", "1"]
    import torch

    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (64, 32),
           "backbone_options": {"width": 16}}  # 128-d features; the index holds 64-d ones
    wider = tmp_path / "wider.pt"
    torch.manual_seed(0)
    save_checkpoint(wider, model=build_model("embedding", **cfg).eval(), model_name="embedding", model_cfg=cfg, epoch=0)
    empty = tmp_path / "token"
    empty.write_text("\n")
    cases = [(["--host", "0.0.0.0"], "needs a token"), (["--host", "192.168.1.5"], "needs a token"),
             (["--token-file", str(empty)], "empty"), (["--token-file", str(tmp_path / "missing")], "No such file"),
             (["--tracks", str(tmp_path)], "no identities.json"), (["--clusters", str(tmp_path)], "no clusters.csv"),
             (["--max-upload-mb", "0"], "must be > 0"), (["--model", str(wider)], "dimension mismatch")]
    for extra, words in cases:
        assert main(base + extra) == 2, extra
        assert words in capsys.readouterr().err, extra


# ------------------------------------------------------------------------------------------------ concurrency

def test_batched_searches_answer_like_single_ones(site):
    """Crops submitted together are embedded and searched in one batch; each gets what a search of its own gives."""
    import time

    from reidkit.search.index import GalleryIndex
    from reidkit.web.batching import SearchBatcher

    ext, index = site["extractor"], GalleryIndex.load(site["config"].index)
    calls = []

    def slow_embed(crops):  # holds the worker so that the other requests queue up behind the first
        calls.append(len(crops))
        time.sleep(0.2)
        return ext.embed(crops)

    batcher = SearchBatcher(slow_embed, lambda q, k: index.search(q, k=k))
    queries = site["query"][:6]
    answers: dict = {}

    def ask(i):
        results, row = batcher.submit(str(queries[i]), 2 + i)
        answers[i] = [h["id"] for h in results.hits(row)[:2 + i]]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert max(calls) > 1 and sum(calls) == len(queries)
    for i, query in enumerate(queries):
        alone = index.search(ext.embed([str(query)]), k=2 + i)
        assert answers[i] == [h["id"] for h in alone.hits(0)]

    def broken(crops):
        raise ValueError("model failed")

    batcher._embed = broken
    with pytest.raises(ValueError, match="model failed"):
        batcher.submit(str(queries[0]), 3)
    batcher._embed = ext.embed  # the worker survived the error
    assert batcher.submit(str(queries[0]), 3)[0].indices.shape == (1, 3)


def test_searches_while_the_index_grows(site):
    """One thread adds features through its own GalleryIndex (as `reidkit index add` in another process would),
    three search through the API. Every answer must come from one committed version: each hit's distance equals
    the one recomputed from the features known to have been added, versions only grow, and nothing fails."""
    from reidkit.search.index import GalleryIndex

    ext = site["extractor"]
    query = site["query"][0]
    q = ext.embed([str(query)])[0].astype(np.float64)
    known = {str(p): f for p, f in zip(site["gallery"], ext.embed([str(p) for p in site["gallery"]]))}
    rng = np.random.default_rng(0)
    batches = []
    for b in range(12):  # rows near the query, so they enter the top-k as they land
        rows = q[None, :] + 0.3 * rng.standard_normal((4, len(q)))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        ids = [f"w{b}-{j}" for j in range(4)]
        known.update(zip(ids, rows))
        batches.append((rows, ids))
    errors, answers = [], []

    def writer():
        index = GalleryIndex.load(site["config"].index)
        for rows, ids in batches:
            index.add_features(rows, [{"id": i, "camid": 0, "time": 1.0} for i in ids])

    def reader():
        client = TestClient(create_app_once)
        versions = []
        for _ in range(10):
            response = client.post("/api/search", files=upload(query), data={"top_k": "5"})
            if response.status_code != 200:
                errors.append(response.text)
                continue
            body = response.json()
            versions.append(body["version"])
            answers.append(body)
        if versions != sorted(versions):
            errors.append(f"versions went back: {versions}")

    create_app_once = create_app(site["config"])
    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(answers) == 30
    for body in answers:
        for hit in body["hits"]:
            reference = 1.0 - float(np.dot(q, known[hit["id"]]) / np.linalg.norm(known[hit["id"]]) / np.linalg.norm(q))
            assert abs(hit["distance"] - reference) < 1e-4
        assert body["count"] == len(site["gallery"]) + 4 * (body["version"] - 1)  # version 1 = the build
    final = TestClient(create_app_once).get("/api/health").json()["index"]
    assert final["count"] == len(site["gallery"]) + 48
