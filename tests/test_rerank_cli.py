"""`reidkit evaluate` and `reidkit search` offer the same re-rankers, and give the same pair-fusion ranking as a
naive reference (plain loop: embedding distance, top-k, pair network on each pair, rank fusion by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.checkpoint import save_checkpoint
from reidkit.cli.main import build_parser, main
from reidkit.models import build_model
from test_rerank_registry import naive_fusion

RERANK_OPTIONS = {"--rerank", "--k1", "--k2", "--lambda", "--aqe-top", "--aqe-alpha", "--ssm-alpha",
                  "--ssm-neighbours", "--pair-model", "--rerank-top", "--pair-weight", "--pair-tta"}
HIDDEN_ALIASES = {"--pair-checkpoint", "--pair-top-k", "--rerank-k"}


def _verb_parser(verb: str):
    parser = build_parser(verb)
    return next(a for a in parser._actions if a.dest == "command").choices[verb]


def _options(parser) -> dict[str, tuple]:
    """option string -> (dest, default, choices, shown in help) of every option of a verb."""
    return {s: (a.dest, a.default, a.choices, a.help != "==SUPPRESS==") for a in parser._actions
            for s in a.option_strings}


def test_evaluate_and_search_offer_the_same_rerank_options():
    evaluate, search = _options(_verb_parser("evaluate")), _options(_verb_parser("search"))
    for name in RERANK_OPTIONS | HIDDEN_ALIASES:
        assert evaluate[name] == search[name], name
        assert evaluate[name][3] == (name in RERANK_OPTIONS)  # aliases parse but stay out of --help
    assert evaluate["--rerank"][2] == ("none", "k_reciprocal", "aqe", "ssm", "pair")
    for text in (_verb_parser(v).format_help() for v in ("evaluate", "search")):
        assert "--k1 K1" in text and "(default: 20)" in text and "--pair-checkpoint" not in text


def test_old_spellings_still_mean_pair_fusion():
    args = build_parser("evaluate").parse_args(["evaluate", "--features", "f.npz", "--pair-checkpoint", "p.pt",
                                                "--pair-top-k", "7", "--checkpoint", "m.pt", "--max-rank", "5"])
    assert (args.pair_model, args.rerank_top, args.model, args.top) == (Path("p.pt"), 7, Path("m.pt"), 5)
    args = build_parser("search").parse_args(["search", "--index", "i", "--query", "q.png", "--rerank-k", "30"])
    assert args.rerank_top == 30


def _features_npz(path: Path, with_paths: bool, tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"query_features": rng.normal(size=(4, 5)), "gallery_features": rng.normal(size=(12, 5)),
              "q_pids": np.arange(4), "g_pids": np.arange(12) % 4, "q_camids": np.zeros(4, int),
              "g_camids": np.ones(12, int)}
    if with_paths:
        for key, n in (("q_paths", 4), ("g_paths", 12)):
            arrays[key] = np.array([str(tmp_path / f"{key}{i}.png") for i in range(n)])
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("source", "extra", "message"), [
    ("distmat", ["--rerank", "k_reciprocal"], "is a distance matrix"),
    ("features", ["--rerank", "pair"], "--rerank pair needs --pair-model"),
    ("features_no_paths", ["--pair-model", "PAIR"], "has no q_paths, g_paths"),
    ("features", ["--flip"], "--flip applies when evaluate embeds"),
    ("features", ["--rerank", "k_reciprocal", "--k1", "0"], "k1 must be >= 1"),
    ("features", ["--k1", "10"], "--k1 applies to --rerank k_reciprocal, but the re-ranking is none"),
    ("features", ["--rerank", "aqe", "--pair-weight", "0.5"], "--pair-weight applies to --rerank pair"),
    ("features", ["--rerank", "ssm", "--pair-tta"], "--pair-tta applies to pair fusion"),
])
def test_evaluate_refuses_a_rerank_that_cannot_apply(tmp_path, capsys, source, extra, message):
    features = _features_npz(tmp_path / "f.npz", source != "features_no_paths", tmp_path)
    pair = tmp_path / "pair.pt"
    save_checkpoint(pair, model=build_model("idla", input_size=(40, 24)), model_name="idla",
                    model_cfg={"input_size": [40, 24]}, epoch=1)
    if source == "distmat":
        with np.load(features) as f:
            np.savez(tmp_path / "d.npz", distmat=np.ones((4, 12)), **{k: f[k] for k in f.files if "pid" in k or
                                                                      "camid" in k})
        argv = ["evaluate", "--distmat", str(tmp_path / "d.npz")]
    else:
        argv = ["evaluate", "--features", str(features)]
    argv += [str(pair) if a == "PAIR" else a for a in extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_outputs_are_named_after_the_json_and_rates_are_percent(tmp_path):
    features = _features_npz(tmp_path / "f.npz", False, tmp_path)
    for name, metric in (("plain", "sqeuclidean"), ("cos", "cosine")):
        assert main(["evaluate", "--features", str(features), "--metric", metric, "--top", "5",
                     "--out", str(tmp_path / f"{name}.json"), "--quiet"]) == 0
    for name in ("plain", "cos"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert (tmp_path / f"{name}_cmc.png").is_file()
        assert report["units"] == "percent" and len(report["cmc"]) == 5
        assert report["cmc"][0] == pytest.approx(report["rank1"]) and report["cmc"][4] == pytest.approx(100.0)
    assert not (tmp_path / "cmc.png").exists()


# ------------------------------------------------------------------ evaluate == search == naive reference

def _write_dataset(root: Path, seed: int = 5) -> None:
    """5 identities x 2 cameras: 1 query (camera 1) and 3 gallery images (camera 2) each, plus gallery
    images of the same identity from camera 1 (junk for the market protocol, kept to exercise it)."""
    rng = np.random.default_rng(seed)
    for folder in ("query", "bounding_box_test", "bounding_box_train"):
        (root / folder).mkdir(parents=True)
    for pid in range(1, 6):
        base = rng.integers(30, 220, 3)
        for cam, folder, count in ((1, "query", 1), (2, "bounding_box_test", 3), (1, "bounding_box_test", 1)):
            for shot in range(count):
                pixels = np.clip(base + rng.normal(0, 40, (32, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / folder / f"{pid:04d}_c{cam}s1_{shot:06d}_00.jpg", quality=95)
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(root / "bounding_box_train" / "0009_c1s1_000000_00.jpg")


def test_pair_fusion_in_evaluate_and_search_equals_a_naive_reference(tmp_path, capsys, captured_distmat):
    data = tmp_path / "data"
    _write_dataset(data)
    torch.manual_seed(0)
    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (32, 16),
           "backbone_options": {"width": 8}}
    embedding = tmp_path / "emb.pt"
    save_checkpoint(embedding, model=build_model("embedding", **cfg).eval(), model_name="embedding",
                    model_cfg=cfg, epoch=0)
    pair_net = build_model("idla", input_size=(40, 24)).eval()
    pair = tmp_path / "pair.pt"
    save_checkpoint(pair, model=pair_net, model_name="idla", model_cfg={"input_size": [40, 24]}, epoch=1)
    top, weight = 4, 0.5

    seen = captured_distmat
    assert main(["evaluate", "--model", str(embedding), "--data", str(data), "--pair-model", str(pair),
                 "--rerank-top", str(top), "--pair-weight", str(weight), "--device", "cpu", "--quiet"]) == 0
    arrays = seen["arrays"]
    q_paths, g_paths = [str(p) for p in arrays["q_paths"]], [str(p) for p in arrays["g_paths"]]

    assert main(["index", "build", "--index", str(tmp_path / "idx"), "--data", str(data), "--split", "gallery",
                 "--model", str(embedding), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", *q_paths, "--top", str(len(g_paths)),
                 "--approx", "none", "--rerank", "pair", "--pair-model", str(pair), "--rerank-top", str(top),
                 "--pair-weight", str(weight), "--device", "cpu", "--json"]) == 0
    searched = json.loads(capsys.readouterr().out)["queries"]

    def image(path: str) -> torch.Tensor:  # the stretch resize every reidkit loader uses
        pixels = np.array(Image.open(path).convert("RGB").resize((24, 40), Image.BILINEAR))
        return pair_net.prepare(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())

    qf, gf = arrays["query_features"].astype(np.float64), arrays["gallery_features"].astype(np.float64)
    changed = 0
    for i in range(len(q_paths)):
        sq_dist = [float(np.sum((qf[i] - gf[j]) ** 2)) for j in range(len(gf))]

        def score(j: int, i: int = i) -> float:
            with torch.no_grad():
                logits = pair_net(image(q_paths[i]), image(g_paths[j]))[0]
            return (logits[1] - logits[0]).item()

        expected = naive_fusion(np.array(sq_dist), score, top, weight)
        assert list(np.argsort(seen["distmat"][i], kind="stable")) == expected
        assert [g_paths.index(hit["path"]) for hit in searched[i]["results"]] == expected
        changed += expected != sorted(range(len(gf)), key=lambda j: (sq_dist[j], j))
    assert changed > 0  # the pair network changed some rankings: the comparison is not vacuous


def test_evaluate_flip_averages_each_image_with_its_mirror(tmp_path, captured_distmat):
    data = tmp_path / "data"
    _write_dataset(data, seed=2)
    torch.manual_seed(1)
    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (32, 16),
           "backbone_options": {"width": 8}}
    model = build_model("embedding", **cfg).eval()
    save_checkpoint(tmp_path / "emb.pt", model=model, model_name="embedding", model_cfg=cfg, epoch=0)
    seen = captured_distmat
    out = tmp_path / "flip.json"
    assert main(["evaluate", "--model", str(tmp_path / "emb.pt"), "--data", str(data), "--flip", "--device", "cpu",
                 "--quiet", "--out", str(out)]) == 0

    def embed(folder: str) -> np.ndarray:  # by hand: one image at a time, its mirror added, then L2-normalised
        feats = []
        for path in sorted((data / folder).glob("*.jpg")):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            x = torch.from_numpy((pixels - np.array(model.input_mean)) / np.array(model.input_std)).float()
            x = x.permute(2, 0, 1)[None]
            with torch.no_grad():
                f = model(x) + model(x.flip(-1))
            feats.append((f / f.norm()).numpy()[0])
        return np.stack(feats)

    q, g = embed("query"), embed("bounding_box_test")
    reference = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(seen["distmat"], reference, atol=1e-4)
    assert json.loads(out.read_text())["flip"] is True
