"""reidkit.search against independent references: plain-loop nearest neighbours and rank-1, the other
engineers' evaluate_rank / re_ranking_features, files read back from disk, and a real CUHK03-NP check."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data.records import Record
from reidkit.errors import ModelError, ReIDError
from reidkit.metrics.plots import OTHER_COLOUR, QUERY_COLOUR, SAME_COLOUR, RankedLayout
from reidkit.search import GalleryIndex, collect_items, exact_search, search_rank_k
from reidkit.search import index as index_module
from reidkit.search.knn import AnnParams, ann_search, build_ann, default_params
from reidkit.search.picture import ranked_list_picture

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUHK03_TRAIN = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OPENVINO_0288 = (SHARED / "models" / "openvino" / "person-reidentification-retail-0288" /
                 "person-reidentification-retail-0288.xml")


# ------------------------------------------------------------------------------------------ references

def naive_topk(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, every dot product in a Python loop, then a stable sort."""
    scores, rows = [], []
    for q in queries:
        sims = [float(np.dot(q.astype(np.float64), g.astype(np.float64))) for g in gallery]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        rows.append(order)
        scores.append([sims[i] for i in order])
    return np.array(scores), np.array(rows)


def naive_rank1(ranked_rows: np.ndarray, g_pids, g_cams, q_pids, q_cams) -> float:
    """Market rank-1 over queries with a cross-camera match, by plain loops."""
    hits, valid = 0, 0
    for q, rows in enumerate(ranked_rows):
        if not any(g_pids[g] == q_pids[q] and g_cams[g] != q_cams[q] for g in range(len(g_pids))):
            continue
        valid += 1
        for g in rows:
            if g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q]:
                continue
            hits += int(g_pids[g] == q_pids[q])
            break
    return hits / valid


def clustered(n: int, dim: int, clusters: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------- a fake extractor

class ProjectionExtractor:
    """A deterministic stand-in model: a fixed random projection of the 16x8 pixels, L2-normalised."""

    backend = "test"
    input_size = (16, 8)
    resize = "stretch"

    def __init__(self, dim: int = 12, seed: int = 0, fail_after_calls: int | None = None):
        self.weights = torch.from_numpy(np.random.default_rng(seed).standard_normal((3 * 16 * 8, dim))).float()
        self.name = f"projection-{dim}-{seed}"
        self.model_path = Path(f"/nonexistent/projection-{dim}-{seed}")
        self.calls, self.fail_after_calls = 0, fail_after_calls

    @property
    def dim(self) -> int:
        return self.weights.shape[1]

    def embed_uint8(self, images: torch.Tensor, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        x = images.float().reshape(len(images), -1) @ self.weights
        return torch.nn.functional.normalize(x, dim=1).numpy()

    def embed(self, images, show_progress: bool = False) -> np.ndarray:
        arrays = [np.asarray(Image.open(p).convert("RGB").resize((8, 16), Image.BILINEAR)) for p in images]
        return self.embed_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def reference_feature(extractor: ProjectionExtractor, path: str) -> np.ndarray:
    """Feature of one image computed on its own, straight from PIL, for comparing with index rows."""
    pixels = np.asarray(Image.open(path).convert("RGB").resize((8, 16), Image.BILINEAR), dtype=np.float64)
    x = pixels.transpose(2, 0, 1).reshape(-1) @ extractor.weights.double().numpy()
    return x / np.linalg.norm(x)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """12 Market-named images of 3 identities x 2 cameras, plus one corrupt file."""
    folder = tmp_path / "gallery"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for pid in (1, 2, 3):
        base = rng.integers(0, 256, (3,))
        for cam in (1, 2):
            for shot in range(2):
                pixels = np.clip(base + rng.normal(0, 25, (32, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{pid:04d}_c{cam}_{cam * 10 + shot:02d}.png")
    (folder / "0009_c1_00.jpg").write_bytes(b"not a jpeg")
    return folder


# ----------------------------------------------------------------------------------------------- exact

@pytest.mark.parametrize("k", [1, 5, 40])
def test_exact_search_matches_plain_loop(k):
    rng = np.random.default_rng(0)
    queries, gallery = rng.standard_normal((7, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    # a tiny block size forces several query blocks
    scores, rows = exact_search(queries, gallery, k, max_block_scores=64)
    ref_scores, ref_rows = naive_topk(queries, gallery, k)
    assert rows.shape == (7, min(k, 30))
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_exact_search_rejects_dimension_mismatch():
    with pytest.raises(ReIDError, match="4-d but the gallery's are 5-d"):
        exact_search(np.zeros((1, 4), np.float32), np.zeros((3, 5), np.float32), 2)


# ----------------------------------------------------------------------------------------- approximate

@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_recall_against_plain_loop(kind):
    gallery = clustered(2000, 32, 40, seed=0)
    queries = clustered(40, 32, 60, seed=1)
    params = default_params(kind, len(gallery))
    _, rows = ann_search(build_ann(gallery, params), params, queries, 10)
    _, ref = naive_topk(queries, gallery, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref)])
    assert recall >= 0.9


def test_ivf_visiting_every_cell_is_exact():
    gallery, queries = clustered(800, 16, 10, seed=2), clustered(5, 16, 10, seed=3)
    params = AnnParams("ivf", nlist=8, nprobe=8)
    _, rows = ann_search(build_ann(gallery, params), params, queries, 5)
    np.testing.assert_array_equal(rows, naive_topk(queries, gallery, 5)[1])


# ---------------------------------------------------------------------------------------------- index

def test_build_stores_features_metadata_and_reports_unreadable(tmp_path, image_folder):
    ext = ProjectionExtractor()
    items = collect_items(image_folder)
    index, report = GalleryIndex.build(tmp_path / "idx", ext, items, chunk_size=5)
    bad = str(image_folder / "0009_c1_00.jpg")
    assert report.added == 12 and [p for p, _ in report.unreadable] == [bad]
    assert bad in report.summary()
    loaded = GalleryIndex.load(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["count"] == 12 and manifest["dim"] == 12 and manifest["unreadable"][0]["path"] == bad
    assert loaded.features.dtype == np.float32
    columns = json.loads((tmp_path / "idx" / manifest["files"]["meta"]).read_text())
    assert len(columns["path"]) == 12 and columns["frame"] == [None] * 12
    for row, (path, pid, camid) in enumerate(zip(columns["path"], columns["pid"], columns["camid"])):
        name = os.path.basename(path)
        assert pid == int(name[:4]) and camid == int(name[6]) - 1
        np.testing.assert_allclose(loaded.features[row], reference_feature(ext, path), atol=1e-5)


def test_folder_with_unparsed_names_indexes_without_metadata(tmp_path):
    folder = tmp_path / "cam"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 16), (10, 20, 30)).save(folder / "sub" / "person.png")
    Image.new("RGB", (8, 16), (50, 20, 30)).save(folder / "0007_c3s1_000123_01.jpg")
    items = collect_items(folder)
    assert items == [Record(str(folder / "0007_c3s1_000123_01.jpg"), 7, 2, 123), str(folder / "sub" / "person.png")]
    index, _ = GalleryIndex.build(tmp_path / "idx", ProjectionExtractor(), items)
    person = str(folder / "sub" / "person.png")
    assert index.metadata.row(1) == {"id": person, "path": person, "pid": None, "camid": None, "track": None,
                                     "frame": None, "time": None, "source": None}


def test_search_returns_nearest_rows(tmp_path, image_folder):
    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, collect_items(image_folder))
    queries = np.stack([reference_feature(ext, str(p)) for p in sorted(image_folder.glob("0002_*.png"))[:2]])
    results = index.search(queries.astype(np.float32), k=4, method="exact")
    _, ref_rows = naive_topk(queries, index.features, 4)
    np.testing.assert_array_equal(results.indices, ref_rows)
    hits = results.hits(0)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_add_appends_skips_duplicates_and_remove_keeps_rows_aligned(tmp_path, image_folder):
    ext = ProjectionExtractor()
    first = [it for it in collect_items(image_folder) if it.pid != 3]
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, first)
    report = GalleryIndex.load(tmp_path / "idx").add(ext, collect_items(image_folder))
    assert report.added == 4 and report.skipped_existing == 8
    index = GalleryIndex.load(tmp_path / "idx")
    assert index.count == 12 and index.manifest["version"] == 2
    removed = index.remove([str(image_folder / "0001_c1_10.png"), "/not/indexed.png"])
    assert removed == 1
    index = GalleryIndex.load(tmp_path / "idx")
    assert index.count == 11 and str(image_folder / "0001_c1_10.png") not in set(index.metadata.paths)
    for row, path in enumerate(index.metadata.paths):
        np.testing.assert_allclose(index.features[row], reference_feature(ext, path), atol=1e-5)
    # only the committed version's data files remain
    names = sorted(os.listdir(tmp_path / "idx"))
    assert names == ["features.v3.npy", "index.json", "index.lock", "meta.v3.json"]


def test_fixed_unreadable_image_is_indexed_on_add_and_leaves_the_list(tmp_path, image_folder):
    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, collect_items(image_folder))
    bad = image_folder / "0009_c1_00.jpg"
    assert [row["path"] for row in index.manifest["unreadable"]] == [str(bad)]
    index.add(ext, collect_items(image_folder))  # still broken: listed once, not twice
    assert [row["path"] for row in GalleryIndex.load(tmp_path / "idx").manifest["unreadable"]] == [str(bad)]
    Image.new("RGB", (16, 32), (200, 10, 10)).save(bad, format="JPEG")
    report = GalleryIndex.load(tmp_path / "idx").add(ext, collect_items(image_folder))
    index = GalleryIndex.load(tmp_path / "idx")
    assert report.added == 1 and index.count == 13 and index.manifest["unreadable"] == []
    np.testing.assert_allclose(index.features[-1], reference_feature(ext, str(bad)), atol=1e-5)


def test_dimension_mismatch_names_both_dims(tmp_path, image_folder):
    index, _ = GalleryIndex.build(tmp_path / "idx", ProjectionExtractor(dim=12), collect_items(image_folder))
    with pytest.raises(ModelError, match=r"12-d features but model projection-7-0 gives 7-d"):
        index.add(ProjectionExtractor(dim=7), collect_items(image_folder))
    with pytest.raises(ModelError, match="12-d features but the query features have shape"):
        index.search(np.zeros((1, 7), np.float32))


def test_other_model_of_same_dim_needs_permission(tmp_path, image_folder):
    ext = ProjectionExtractor()
    ext.model_path = tmp_path / "model_a.bin"
    ext.model_path.write_bytes(b"a")
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, collect_items(image_folder)[:4])
    other = ProjectionExtractor(seed=1)
    other.model_path = tmp_path / "model_b.bin"
    other.model_path.write_bytes(b"b")
    with pytest.raises(ModelError, match="differs from the one that built"):
        index.add(other, collect_items(image_folder))
    assert len(index.check_extractor(other, allow_other_model=True)) == 1


def _snapshot(root: Path) -> tuple[np.ndarray, list[str], dict]:
    index = GalleryIndex.load(root)
    return index.features.copy(), list(index.metadata.paths), index.manifest


def test_interrupted_build_leaves_previous_index_intact(tmp_path, image_folder):
    root = tmp_path / "idx"
    GalleryIndex.build(root, ProjectionExtractor(), collect_items(image_folder)[:6])
    before = _snapshot(root)
    with pytest.raises(KeyboardInterrupt):  # interrupted while embedding the second chunk
        GalleryIndex.build(root, ProjectionExtractor(seed=5, fail_after_calls=1), collect_items(image_folder),
                           overwrite=True, chunk_size=4)
    after = _snapshot(root)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1:] == after[1:]


def test_interrupted_commit_leaves_previous_index_intact(tmp_path, image_folder, monkeypatch):
    root = tmp_path / "idx"
    GalleryIndex.build(root, ProjectionExtractor(), collect_items(image_folder)[:6])
    before = _snapshot(root)

    def crash(*args, **kwargs):
        raise OSError("disk full while writing index.json")

    # the new data files get written, then the manifest write fails
    monkeypatch.setattr(index_module, "atomic_write_json", crash)
    with pytest.raises(OSError):
        GalleryIndex.load(root).add(ProjectionExtractor(), collect_items(image_folder))
    assert "features.v2.npy" in os.listdir(root)
    after = _snapshot(root)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1:] == after[1:]
    monkeypatch.undo()
    # the next successful write skips the half-written version and clears it away
    GalleryIndex.load(root).add(ProjectionExtractor(), collect_items(image_folder))
    assert sorted(os.listdir(root)) == ["features.v3.npy", "index.json", "index.lock", "meta.v3.json"]
    assert GalleryIndex.load(root).count == 12


def test_existing_index_is_not_overwritten_by_default(tmp_path, image_folder):
    GalleryIndex.build(tmp_path / "idx", ProjectionExtractor(), collect_items(image_folder)[:2])
    with pytest.raises(ReIDError, match="already exists"):
        GalleryIndex.build(tmp_path / "idx", ProjectionExtractor(), collect_items(image_folder))


def test_load_missing_index_names_folder(tmp_path):
    with pytest.raises(ReIDError, match=f"index {tmp_path / 'nope'}: no index.json"):
        GalleryIndex.load(tmp_path / "nope")


def test_stored_approximate_index_survives_reload_and_add(tmp_path, image_folder):
    ext = ProjectionExtractor()
    items = collect_items(image_folder)
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, items[:8], approx="hnsw")
    assert index.manifest["ann"]["kind"] == "hnsw"
    GalleryIndex.load(tmp_path / "idx").add(ext, items)
    index = GalleryIndex.load(tmp_path / "idx")
    queries = index.features[:3]
    approx = index.search(queries, k=5, method="hnsw")
    exact = index.search(queries, k=5, method="exact")
    assert approx.method == "hnsw" and index._ann.ntotal == 12
    np.testing.assert_array_equal(approx.indices, exact.indices)  # 12 points: HNSW is exhaustive here


def test_auto_uses_ivf_only_above_the_size_threshold(tmp_path, image_folder, monkeypatch):
    from reidkit.search import knn

    ext = ProjectionExtractor()
    small, _ = GalleryIndex.build(tmp_path / "small", ext, collect_items(image_folder))
    assert small.manifest["ann"] is None and small.search(small.features[:1], k=3).method == "exact"
    monkeypatch.setattr(knn, "APPROX_THRESHOLD", 10)
    big, _ = GalleryIndex.build(tmp_path / "big", ext, collect_items(image_folder))
    assert big.manifest["ann"]["kind"] == "ivf" and (tmp_path / "big" / big.manifest["files"]["ann"]).is_file()
    results = GalleryIndex.load(tmp_path / "big").search(big.features[:2], k=3)
    assert results.method == "ivf"
    np.testing.assert_array_equal(results.indices[:, 0], [0, 1])  # each row finds itself first


# ---------------------------------------------------------------------------------------- evaluation

def test_search_rank1_matches_plain_loop_and_evaluate_rank():
    from reidkit.metrics import evaluate_rank

    rng = np.random.default_rng(4)
    g_pids, g_cams = rng.integers(0, 15, 200), rng.integers(0, 3, 200)
    q_pids, q_cams = rng.integers(0, 15, 30), rng.integers(0, 3, 30)
    centres = rng.standard_normal((15, 8))
    def feats(pids):
        x = centres[pids] + 1.2 * rng.standard_normal((len(pids), 8))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    gallery, queries = feats(g_pids), feats(q_pids)
    meta = index_module.Metadata.from_columns(id=[f"g{i}" for i in range(200)], pid=g_pids.tolist(),
                                              camid=g_cams.tolist())
    index = GalleryIndex(Path("mem"), gallery, meta, {"dim": 8, "version": 0})
    results = index.search(queries, k=200, method="exact")
    got = search_rank_k(results, q_pids, q_cams, ranks=(1, 5))
    assert got["rank1"] == pytest.approx(naive_rank1(results.indices, g_pids, g_cams, q_pids, q_cams))
    cmc, _ = evaluate_rank(1 - queries @ gallery.T, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert got["rank1"] == pytest.approx(float(cmc[0])) and got["rank5"] == pytest.approx(float(cmc[4]))


def test_k_reciprocal_over_the_whole_gallery_equals_full_reranking():
    from reidkit.rerank.methods import re_ranking_features

    gallery, queries = clustered(60, 8, 6, seed=5), clustered(4, 8, 6, seed=6)
    meta = index_module.Metadata.from_columns(id=[f"g{i}" for i in range(60)], pid=[0] * 60, camid=[0] * 60)
    index = GalleryIndex(Path("mem"), gallery, meta, {"dim": 8, "version": 0})
    results = index.search(queries, k=10, method="exact", rerank="k_reciprocal", rerank_k=60, k1=8, k2=3)
    full = re_ranking_features(queries, gallery, k1=8, k2=3, lambda_value=0.3)
    np.testing.assert_array_equal(results.indices, np.argsort(full, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(results.rerank_distances, np.sort(full, axis=1)[:, :10], rtol=1e-6)
    np.testing.assert_allclose(results.scores[0], gallery[results.indices[0]] @ queries[0], rtol=1e-5)


def test_pair_network_reranking_orders_candidates_by_pair_score(tmp_path, image_folder):
    from reidkit.data.images import load_image_tensor
    from reidkit.models import build_model

    torch.manual_seed(0)
    pair_model = build_model("idla", input_size=(64, 32)).eval()
    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, collect_items(image_folder))
    query = str(image_folder / "0003_c2_20.png")
    results = index.search(ext.embed([query]), k=5, rerank="pair", rerank_k=8, model=pair_model,
                           query_images=[query])
    first_stage = index.search(ext.embed([query]), k=8, method="exact").indices[0]
    pool = np.unique(first_stage)
    scores = pair_model.score(load_image_tensor([query], (64, 32)),
                              load_image_tensor([index.metadata.paths[i] for i in pool], (64, 32))).numpy()[0]
    expected = pool[np.argsort(-scores, kind="stable")[:5]]
    assert results.rerank == "pair"
    np.testing.assert_array_equal(results.indices[0], expected)
    assert np.all(np.diff(results.rerank_distances[0]) > 0)  # pair fusion: increasing distances in the new order


# ------------------------------------------------------------------------------------------- picture

def test_ranked_list_picture_frames(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 40), (0, 0, 0)).save(img)
    hits = [[{"rank": 1, "score": 0.9, "path": str(img), "pid": 5}, {"rank": 2, "score": 0.5, "path": str(img),
                                                                      "pid": 6}]]
    out = ranked_list_picture([str(img)], hits, tmp_path / "r.png", query_pids=[5], cell_size=(40, 20),
                              border=3, gap=3)
    pic = np.asarray(Image.open(out))
    layout = RankedLayout(cell_size=(40, 20), border=3, gap=3)  # the shared ranked-list picture's geometry
    # top-left frame pixel of each cell: query blue, rank 1 green (same pid), rank 2 red
    corners = [layout.frame_box(0, c)[:2] for c in range(3)]
    assert [tuple(pic[y, x]) for x, y in corners] == [QUERY_COLOUR, SAME_COLOUR, OTHER_COLOUR]


# ----------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    from reidkit.cli.search import add_search_parsers

    parser = argparse.ArgumentParser(prog="reidkit")
    add_search_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_choices_mirror_library_constants():
    from reidkit.cli import search as cli
    from reidkit.cli.export import FORMAT_CHOICES
    from reidkit.export.onnx import FORMATS
    from reidkit.inference.backends import BACKENDS
    from reidkit.search import knn, sources

    approx = ("auto", "none", *knn.APPROX_KINDS)
    assert cli.BACKEND_CHOICES == BACKENDS and set(cli.SEARCH_APPROX_CHOICES) == {"none", *knn.METHODS}
    assert approx == cli.APPROX_CHOICES and cli.SPLIT_CHOICES == sources.SOURCE_SPLITS
    assert FORMAT_CHOICES == FORMATS  # re-ranker choices: tests/test_rerank_registry.py


def test_cli_build_info_search_json(tmp_path, image_folder, small_checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = _parser()
    run = lambda argv: (lambda a: a.func(a))(parser.parse_args(argv))  # noqa: E731
    run(["index", "build", "--index", "idx", "--images", str(image_folder), "--model", str(small_checkpoint),
         "--quiet", "--device", "cpu"])
    assert "1 unreadable image(s)" in capsys.readouterr().out
    run(["index", "info", "--index", "idx", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 12 and info["identities"] == 3 and info["dim"] == 64
    query = image_folder / "0002_c1_10.png"
    run(["search", "--index", "idx", "--query", str(query), "--top", "3", "--json", "--device", "cpu",
         "--picture", "ranked.png"])
    out = json.loads(capsys.readouterr().out)
    hits = out["queries"][0]["results"]
    assert hits[0]["path"] == str(query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert out["picture"] == "ranked.png" and Path("ranked.png").is_file()
    before = sorted(os.listdir(tmp_path))
    run(["search", "--index", "idx", "--query", str(query), "--top", "2", "--device", "cpu"])
    table = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before  # no picture unless asked
    # the camera as in the file name: 0002_c1_... is camera 1 (stored camid 0)
    assert "rank   score    pid  cam  path" in table and f"   1  1.0000      2    1  {query}" in table


# ---------------------------------------------------------------------------------- real end to end

@pytest.mark.shared
def test_cuhk03_search_rank1_equals_evaluate_rank_with_intel_0288(tmp_path):
    if not (CUHK03_TRAIN.is_dir() and OPENVINO_0288.is_file()):
        pytest.skip("../shared CUHK03-NP data or Intel 0288 model not present")
    pytest.importorskip("openvino")
    from reidkit.data import carve_validation_records, load_image_folder
    from reidkit.inference.backends import build_extractor
    from reidkit.metrics import evaluate_rank

    val = carve_validation_records(load_image_folder(CUHK03_TRAIN).train, 150, seed=0)
    keep = set(sorted({r.pid for r in val.query})[:30])  # 30 of the 150 ids keep this test fast; bench does all
    query = [r for r in val.query if r.pid in keep]
    gallery = [r for r in val.gallery if r.pid in keep]
    ext = build_extractor(OPENVINO_0288, batch_size=32)
    index, report = GalleryIndex.build(tmp_path / "idx", ext, gallery)
    assert report.added == len(gallery) and not report.unreadable
    q_feats = ext.embed([r.path for r in query])
    q_pids, q_cams = np.array([r.pid for r in query]), np.array([r.camid for r in query])
    index = GalleryIndex.load(tmp_path / "idx")
    got = search_rank_k(index.search(q_feats, k=30, method="exact"), q_pids, q_cams, ranks=(1,))
    by_path = {r.path: r for r in gallery}  # gallery ids from the records, not from the index's metadata
    g_pids = np.array([by_path[p].pid for p in index.metadata.paths])
    g_cams = np.array([by_path[p].camid for p in index.metadata.paths])
    cmc, _ = evaluate_rank(1 - q_feats @ index.features.T, q_pids, g_pids, q_cams, g_cams, max_rank=1)
    assert got["rank1"] == pytest.approx(float(cmc[0]))
    assert got["rank1"] > 0.3  # a working ReID model; chance is ~1/30


# ------------------------------------------------------------------------- crops in memory, ids, locking

def crop_arrays(n: int, seed: int = 7) -> list[np.ndarray]:
    """HxWx3 uint8 crops at the projection's input size (16x8), so resizing leaves them exact."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (16, 8, 3), dtype=np.uint8) for _ in range(n)]


def array_feature(extractor: ProjectionExtractor, crop: np.ndarray) -> np.ndarray:
    """Reference feature of one in-memory crop, by numpy alone."""
    x = crop.transpose(2, 0, 1).reshape(-1).astype(np.float64) @ extractor.weights.double().numpy()
    return x / np.linalg.norm(x)


def test_crops_as_arrays_with_metadata_come_back_with_results(tmp_path):
    ext = ProjectionExtractor()
    crops = crop_arrays(6)
    meta = [{"camid": i % 2, "track": 10 + i // 2, "frame": 100 + i, "time": 1.5 * i, "source": "cam.mp4"}
            for i in range(6)]
    meta[4]["id"] = "person-A"
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, [])
    report = index.add_images(ext, crops, meta)
    assert report.added == 6 and report.ids == ["item-0", "item-1", "item-2", "item-3", "person-A", "item-4"]
    index = GalleryIndex.load(tmp_path / "idx")
    reference = np.stack([array_feature(ext, c) for c in crops])
    query = (reference[2] + 0.3 * reference[5]).astype(np.float32)[None]
    results = index.search(query / np.linalg.norm(query), k=6, method="exact")
    naive = reference @ (query[0] / np.linalg.norm(query[0]))  # plain cosine over the reference embeddings
    order = np.argsort(-naive, kind="stable")
    hits = results.hits(0)
    assert [h["frame"] for h in hits] == [100 + i for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], naive[order], atol=1e-5)
    for hit in hits:
        i = hit["frame"] - 100
        assert (hit["camid"], hit["track"], hit["time"], hit["source"], hit["path"]) == \
            (i % 2, 10 + i // 2, 1.5 * i, "cam.mp4", None)
    # the same id again is skipped; removal by id
    again = index.add_images(ext, crops[4:5], [{"id": "person-A"}])
    assert again.added == 0 and again.skipped_existing == 1
    assert index.remove(["person-A", "item-0"]) == 2
    assert sorted(GalleryIndex.load(tmp_path / "idx").metadata.frames.tolist()) == [101, 102, 103, 105]


def test_add_images_accepts_pil_and_paths_and_rejects_bad_metadata(tmp_path, image_folder):
    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, [])
    path = str(image_folder / "0001_c1_10.png")
    pil = Image.fromarray(crop_arrays(1)[0])
    report = index.add_images(ext, [pil, path], [{"pid": 4}, {"pid": 1}])
    assert report.ids == ["item-0", path]  # a file's path is its id
    np.testing.assert_allclose(index.features[1], reference_feature(ext, path), atol=1e-5)
    np.testing.assert_allclose(index.features[0], array_feature(ext, np.asarray(pil)), atol=1e-5)
    with pytest.raises(ReIDError, match=r"metadata\[0\]: unknown key\(s\) \['camera'\]"):
        index.add_images(ext, crop_arrays(1), [{"camera": 2}])
    with pytest.raises(ReIDError, match="2 images but 1 metadata entries"):
        index.add_images(ext, crop_arrays(2), [{}])
    with pytest.raises(ReIDError, match=r"images\[0\]: float arrays must hold values in \[0, 1\]"):
        index.add_images(ext, [np.full((16, 8, 3), 200.0)])
    assert GalleryIndex.load(tmp_path / "idx").count == 2  # refused input wrote nothing


def test_refresh_follows_another_writer_and_drops_the_cached_ann(tmp_path):
    ext = ProjectionExtractor()
    crops = crop_arrays(12, seed=3)
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, [])
    index.add_images(ext, crops[:8])
    reader = GalleryIndex.load(tmp_path / "idx")
    assert reader.search(reader.features[:1], k=1, method="hnsw").method == "hnsw"  # scratch HNSW over 8 rows
    assert reader.refresh() is False
    GalleryIndex.load(tmp_path / "idx").add_images(ext, crops[8:])  # "another process"
    assert reader.count == 8 and reader.refresh() is True and reader.count == 12
    new = array_feature(ext, crops[11]).astype(np.float32)[None]
    assert reader.search(new, k=1, method="hnsw").hits(0)[0]["id"] == "item-11"


def test_second_build_to_a_new_path_fails_at_commit(tmp_path, image_folder):
    root = tmp_path / "idx"
    items = collect_items(image_folder)

    class RacingExtractor(ProjectionExtractor):
        """While this build embeds, another build of the same new path completes."""

        def embed_uint8(self, images, show_progress=False):
            if self.calls == 0:
                GalleryIndex.build(root, ProjectionExtractor(seed=1), items[:3])
            return super().embed_uint8(images, show_progress)

    with pytest.raises(ReIDError, match="another process created an index there while this build ran"):
        GalleryIndex.build(root, RacingExtractor(), items)
    survivor = GalleryIndex.load(root)
    assert survivor.count == 3
    np.testing.assert_allclose(survivor.features[0], reference_feature(ProjectionExtractor(seed=1),
                                                                       survivor.metadata.paths[0]), atol=1e-5)


def test_writer_waits_for_the_lock_and_names_the_folder(tmp_path, monkeypatch):
    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, [])
    monkeypatch.setattr(index_module, "LOCK_TIMEOUT", 0.2)
    busy = f"index {tmp_path / 'idx'}: another process has been writing it"
    # another writer holds the lock (a separate open file description: flock conflicts as between processes)
    with index_module.writer_lock(tmp_path / "idx"), pytest.raises(ReIDError, match=busy):
        index.add_images(ext, crop_arrays(1))
    assert index.add_images(ext, crop_arrays(1)).added == 1


def test_old_format_index_loads_and_converts_on_the_next_write(tmp_path, image_folder):
    """A reidkit-index-1 folder written by hand: path-keyed, columns path/pid/camid/frame."""
    ext = ProjectionExtractor()
    root = tmp_path / "old"
    root.mkdir()
    paths = [str(p) for p in sorted(image_folder.glob("*.png"))[:4]]
    feats = np.stack([reference_feature(ext, p) for p in paths]).astype(np.float32)
    np.save(root / "features.v1.npy", feats)
    (root / "meta.v1.json").write_text(json.dumps({"path": paths, "pid": [1, 1, None, 2], "camid": [0, 1, 0, None],
                                                   "frame": [None] * 4}))
    (root / "index.json").write_text(json.dumps({
        "format": "reidkit-index-1", "version": 1, "dim": 12, "count": 4, "extractor": {"name": "projection"},
        "files": {"features": "features.v1.npy", "meta": "meta.v1.json", "ann": None}, "ann": None,
        "approx": "auto", "unreadable": [], "sources": [], "created": "x", "updated": "x"}))
    index = GalleryIndex.load(root)
    hit = index.search(feats[1:2], k=1).hits(0)[0]
    assert (hit["id"], hit["path"], hit["pid"], hit["camid"], hit["track"]) == (paths[1], paths[1], 1, 1, None)
    index.add_images(ext, crop_arrays(1))
    manifest = json.loads((root / "index.json").read_text())
    assert manifest["format"] == "reidkit-index-2" and manifest["count"] == 5
    reloaded = GalleryIndex.load(root)
    assert list(reloaded.metadata.ids[:4]) == paths and reloaded.metadata.pids.tolist()[:4] == [1, 1, -1, 2]


def test_unknown_format_names_folder_and_command(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": "reidkit-index-9", "version": 1}))
    with pytest.raises(ReIDError, match=r"format 'reidkit-index-9'.*reidkit index build --index"):
        GalleryIndex.load(tmp_path)


def test_index_info_json_into_a_closed_pipe_exits_quietly(tmp_path):
    """`reidkit index info --json | head -1`: the reader leaves before the output is written."""
    import subprocess
    import sys

    ext = ProjectionExtractor()
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, [])
    index.add_images(ext, crop_arrays(3))
    proc = subprocess.Popen([sys.executable, "-m", "reidkit.cli", "index", "info", "--json", "--index",
                             str(tmp_path / "idx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `head` exiting: every write from now on hits a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err
