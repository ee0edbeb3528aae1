"""XQDA (reidkit.classic.xqda) against a direct linear-algebra solution written here: covariances by explicit
loops over pairs, the subspace from numpy.linalg.eig of inv(Sigma_I) Sigma_E, M = inv(W' S_I W) - inv(W' S_E W)."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.classic import CLASSIC_METHODS, XQDA
from reidkit.cli.evaluate import CLASSIC_CHOICES
from reidkit.errors import ReIDError


def reference_kernel(x, pids, camids=None, regulariser=0.001):
    """W M W^T by the textbook route: every ordered pair of distinct images, one at a time."""
    d = x.shape[1]
    s_i, s_e, n_i, n_e = np.zeros((d, d)), np.zeros((d, d)), 0, 0
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j or (camids is not None and camids[i] == camids[j]):
                continue
            diff = (x[i] - x[j])[:, None]
            if pids[i] == pids[j]:
                s_i += diff @ diff.T
                n_i += 1
            else:
                s_e += diff @ diff.T
                n_e += 1
    s_i = s_i / n_i + regulariser * np.eye(d)
    s_e = s_e / n_e
    values, vectors = np.linalg.eig(np.linalg.inv(s_i) @ s_e)
    values, vectors = values.real, vectors.real
    w = vectors[:, values > 1]
    m = np.linalg.inv(w.T @ s_i @ w) - np.linalg.inv(w.T @ s_e @ w)
    return w @ m @ w.T, int((values > 1).sum()), s_i, s_e


def toy_problem(num_ids=6, per_id=4, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)) * np.linspace(2.0, 0.2, dim)  # a few discriminative directions
    pids = np.repeat(np.arange(num_ids), per_id)
    camids = np.tile(np.arange(per_id) % 2, num_ids)
    x = centres[pids] + 0.3 * rng.normal(size=(len(pids), dim))
    return x, pids, camids


def direct_distances(kernel, q, g):
    return np.array([[(a - b) @ kernel @ (a - b) for b in g] for a in q])


@pytest.mark.parametrize("cameras", [True, False])
def test_matches_direct_solution(cameras):
    x, pids, camids = toy_problem()
    cams = camids if cameras else None
    kernel, rank, _, _ = reference_kernel(x, pids, cams)
    xqda = XQDA().fit(x, pids, cams)
    assert xqda.W.shape[1] == rank
    np.testing.assert_allclose(xqda.W @ xqda.M @ xqda.W.T, kernel, atol=1e-6, rtol=1e-6)
    q, g = x[:5] + 0.1, x[7:15] - 0.2
    expected = direct_distances(kernel, q, g)
    np.testing.assert_allclose(xqda.distance(q, g), expected, atol=1e-6, rtol=1e-6)
    embedded_q, embedded_g = xqda.transform(q).astype(np.float64), xqda.transform(g).astype(np.float64)
    squared_l2 = ((embedded_q[:, None] - embedded_g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_l2, expected, rtol=1e-4, atol=1e-4)  # float32 embedding


def test_pair_counts_and_covariances():
    x, pids, camids = toy_problem(num_ids=3, per_id=4, dim=3)
    _, _, s_i, s_e = reference_kernel(x, pids, camids)
    xqda = XQDA().fit(x, pids, camids)
    # 3 ids x (2 cam-0 x 2 cam-1 images) x 2 orders intra; 12 x 6 cross-camera pairs in all, ordered.
    assert (xqda.num_intra, xqda.num_extra) == (24, 12 * 6 - 24)
    from reidkit.classic.xqda import pair_covariances

    intra, extra, _, _ = pair_covariances(x, pids, camids)
    np.testing.assert_allclose(intra + 0.001 * np.eye(3), s_i, atol=1e-10)
    np.testing.assert_allclose(extra, s_e, atol=1e-10)


@pytest.mark.parametrize("chunk", [2048, 7])
def test_more_dimensions_than_images_uses_the_span(monkeypatch, chunk):
    """LOMO's case (d >> n): working in the span of the images (float32 input converted a slice of `chunk`
    dimensions at a time) must give the full-space solution's distances."""
    import reidkit.classic.xqda as module

    monkeypatch.setattr(module, "SPAN_CHUNK", chunk)
    x, pids, camids = toy_problem(num_ids=4, per_id=3, dim=30, seed=3)
    x = x.astype(np.float32).astype(np.float64) if chunk == 7 else x
    kernel, _, _, _ = reference_kernel(x, pids, camids)
    xqda = XQDA().fit(x.astype(np.float32) if chunk == 7 else x, pids, camids)
    q, g = x[:3], x[3:9]
    np.testing.assert_allclose(xqda.distance(q, g), direct_distances(kernel, q, g), rtol=1e-6, atol=1e-6)


def test_bad_input_names_the_argument():
    x, pids, camids = toy_problem()
    with pytest.raises(ReIDError, match="features: empty training set"):
        XQDA().fit(np.zeros((0, 5)), [])
    with pytest.raises(ReIDError, match="pids: a single identity"):
        XQDA().fit(x, np.zeros(len(x), dtype=int))
    with pytest.raises(ReIDError, match="pids: 3 labels for 24"):
        XQDA().fit(x, pids[:3])
    with pytest.raises(ReIDError, match="camids: 2 cameras for 24"):
        XQDA().fit(x, pids, camids[:2])
    with pytest.raises(ReIDError, match="pids: no two images of one identity"):
        XQDA().fit(x[::4], pids[::4])
    fitted = XQDA().fit(x, pids, camids)
    with pytest.raises(ReIDError, match="gallery: 4 dimensions, but XQDA was fitted on 5"):
        fitted.distance(x[:2], x[:2, :4])
    with pytest.raises(ReIDError, match="features: 6 dimensions"):
        fitted.transform(np.zeros((2, 6)))
    with pytest.raises(ReIDError, match="call fit"):
        XQDA().distance(x, x)


def test_cli_choices_are_the_registered_methods():
    assert sorted(CLASSIC_CHOICES) == CLASSIC_METHODS.names()


# ------------------------------------------------------------------------- reidkit evaluate --classic lomo-xqda

@pytest.mark.slow  # LOMO of ~110 images and two 26,960-dim XQDA fits: ~8 s idle, ~30 s on the loaded machine
def test_evaluate_classic_equals_lomo_and_xqda_distances(tiny_market, tmp_path):
    """The CLI ranks by XQDA's metric embedding; its mAP must equal ranking by XQDA.distance directly."""
    import json

    from reidkit.classic import LOMO
    from reidkit.cli.main import main
    from reidkit.data import load_dataset, split_arrays
    from reidkit.metrics.rank import evaluate_rank_full

    out = tmp_path / "r.json"
    assert main(["evaluate", "--classic", "lomo-xqda", "--train", str(tiny_market / "bounding_box_train"),
                 "--data", str(tiny_market), "--out", str(out), "--quiet", "--top", "5"]) == 0
    report = json.loads(out.read_text())
    assert report["classic"]["lomo_dim"] == 26_960 and report["classic"]["train_ids"] == 12
    data = load_dataset(tiny_market)
    (tp, tpid, tcam), (qp, qpid, qcam), (gp, gpid, gcam) = (split_arrays(s) for s in (data.train, data.query,
                                                                                     data.gallery))
    lomo = LOMO()
    xqda = XQDA().fit(lomo(tp), tpid, tcam)
    result = evaluate_rank_full(xqda.distance(lomo(qp), lomo(gp)), qpid, gpid, qcam, gcam, max_rank=5)
    assert report["mAP"] == pytest.approx(100 * result.mAP, abs=1e-3)


def _one_identity_folder(folder, source):
    folder.mkdir()
    image = next(iter(sorted(source.glob("*.jpg"))))
    for name in ("0001_c1_000001.jpg", "0001_c2_000002.jpg"):
        (folder / name).write_bytes(image.read_bytes())
    return folder


@pytest.mark.parametrize("case, message", [
    ("single", "--train {}: a single identity"),
    ("missing-train", "--classic lomo-xqda: also give --train"),
    ("train-without-classic", "--train applies to --classic"),
    ("with-model", "give exactly one of --distmat, --features, --model or --classic"),
])
def test_evaluate_classic_bad_input(tiny_market, tmp_path, capsys, case, message):
    from reidkit.cli.main import main

    single = _one_identity_folder(tmp_path / "one", tiny_market / "bounding_box_train")
    argv = {"single": ["--classic", "lomo-xqda", "--train", str(single)],
            "missing-train": ["--classic", "lomo-xqda"],
            "train-without-classic": ["--features", str(tmp_path / "f.npz"), "--train", str(single)],
            "with-model": ["--classic", "lomo-xqda", "--model", str(tmp_path / "m.pt"), "--train", str(single)],
            }[case]
    assert main(["evaluate", *argv, "--data", str(tiny_market), "--quiet"]) == 2
    assert message.format(single) in capsys.readouterr().err
