"""AlignedReID end to end: the embedding model's local branch, the trainer's local triplet (hard samples mined on
the GLOBAL distance), validation and `reidkit evaluate` with global + local distance, checkpoints.

References are independent: plain loops for pooling / 1x1 conv / BatchNorm, hand-written label-smoothed CE and
batch-hard mining, and the recursive shortest path of test_alignment for every local distance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from reidkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from reidkit.cli.main import main
from reidkit.config import load_config
from reidkit.data import load_dataset
from reidkit.data.records import split_arrays
from reidkit.errors import ConfigError, ModelError
from reidkit.inference.extractor import Extractor
from reidkit.inference.features import embed_tensor, embed_tensor_local
from reidkit.metrics import evaluate_rank_full
from reidkit.models import build_model
from reidkit.training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import EmbeddingTrainer
from test_alignment import naive_local_distance

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOCAL_DIM = 8


def tiny_model(**cfg):
    torch.manual_seed(0)
    options = {"backbone": "simple_cnn", "backbone_options": {"width": 8}, "pooling": "avg", "num_classes": 5,
               "input_size": (64, 32), "local_dim": 4}
    options.update(cfg)
    return build_model("embedding", **options)


def aligned_config(students: int = 1, **optim) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg", local_dim=LOCAL_DIM),
        data=DataConfig(validation="dataset", height=64, width=32),
        loss=LossConfig(local_weight=1.0),
        optim=OptimConfig(**{"epochs": 2, "p": 4, "k": 2, "lr": 1e-3, "warmup_epochs": 0, **optim}),
        num_threads=1, students=students, flip_tta=True, eval_every=1,
    )


def manual_local_branch(fmap: np.ndarray, branch, pool: str, batch_stats: bool) -> np.ndarray:
    """Row pooling, 1x1 conv, BatchNorm (batch statistics or running ones) and ReLU, by loops."""
    n_items, channels, height, width = fmap.shape
    weight = branch.reduce.weight.detach()[:, :, 0, 0].double().numpy()
    dim = weight.shape[0]
    z = np.zeros((n_items, height, dim))
    for n in range(n_items):
        for h in range(height):
            row = [[fmap[n, c, h, w] for w in range(width)] for c in range(channels)]
            pooled = [max(r) if pool == "max" else sum(r) / width for r in row]
            for k in range(dim):
                z[n, h, k] = sum(weight[k, c] * pooled[c] for c in range(channels))
    bn = branch.bn
    if batch_stats:  # BatchNorm2d in training: per channel over the N * H * 1 values, biased variance
        mean, var = z.mean(axis=(0, 1)), z.var(axis=(0, 1))
    else:
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    out = (z - mean) / np.sqrt(var + bn.eps) * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
    return np.maximum(out, 0.0)


# ----------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_train_mode_local_features_equal_manual_computation(pool):
    model = tiny_model(local_pool=pool).train()
    out = model(torch.randn(3, 3, 64, 32))
    assert out["feature_map"].shape == (3, 64, 4, 2)
    assert out["local_features"].shape == (3, 4, 4)  # (N, stripes = map rows, local_dim)
    expected = manual_local_branch(out["feature_map"].detach().double().numpy(), model.local_branch, pool, True)
    np.testing.assert_allclose(out["local_features"].detach().numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_embed_with_local_returns_the_global_embedding_and_running_stat_local_features(pool):
    model = tiny_model(local_pool=pool)
    model.train()
    model(torch.randn(6, 3, 64, 32))  # move every running statistic away from 0 / 1
    model.eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        global_features, local_features = model.embed_with_local(x)
        fmap = model.backbone(x).double().numpy()
        plain = model(x)
    assert torch.equal(global_features, plain)  # eval forward unchanged: still the global L2 embedding
    expected = manual_local_branch(fmap, model.local_branch, pool, False)
    np.testing.assert_allclose(local_features.numpy(), expected, atol=1e-4)


def test_local_branch_leaves_the_global_outputs_unchanged():
    plain, aligned = tiny_model(local_dim=0), tiny_model()
    missing, unexpected = aligned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("local_branch.") for k in missing)
    x = torch.randn(4, 3, 64, 32)
    out_plain, out_aligned = plain.train()(x), aligned.train()(x)
    assert "local_features" not in out_plain and plain.local_branch is None
    for key in ("features", "bn_features", "logits", "feature_map"):
        assert torch.allclose(out_plain[key], out_aligned[key], atol=1e-6), key


def test_flip_tta_averages_the_local_features_of_image_and_mirror():
    model = tiny_model()
    model.train()
    model(torch.randn(6, 3, 64, 32))
    model.eval()
    images = torch.randint(0, 256, (5, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    kw = dict(mean=model.input_mean, std=model.input_std, device=torch.device("cpu"), batch_size=2, flip=True)
    global_features, local_features = embed_tensor_local(model, images, **kw)
    mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
    x = (images.double() / 255 - mean) / torch.tensor(model.input_std).view(1, 3, 1, 1)
    with torch.no_grad():
        (g1, l1), (g2, l2) = model.embed_with_local(x.float()), model.embed_with_local(x.float().flip(-1))
    torch.testing.assert_close(local_features, (l1 + l2) / 2, rtol=1e-5, atol=1e-5)  # trained scale kept
    torch.testing.assert_close(global_features, torch.nn.functional.normalize(g1 + g2, dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(global_features, embed_tensor(model, images, **kw), rtol=0, atol=0)
    assert model.training is False


def test_local_options_are_checked_and_named():
    with pytest.raises(ModelError, match="local_dim=-1"):
        tiny_model(local_dim=-1)
    with pytest.raises(ModelError, match="local_pool='median'"):
        tiny_model(local_pool="median")
    with pytest.raises(ModelError, match="no local branch"):
        tiny_model(local_dim=0).eval().embed_with_local(torch.randn(1, 3, 64, 32))


# --------------------------------------------------------------------------------------- trainer loss
def _label_smoothed_ce(logits: np.ndarray, labels: list[int], epsilon: float) -> float:
    total = 0.0
    for row, label in zip(logits, labels):
        log_z = math.log(sum(math.exp(v) for v in row))
        total -= sum(((1 - epsilon) * (k == label) + epsilon / len(row)) * (row[k] - log_z) for k in range(len(row)))
    return total / len(labels)


def _hard_triplets(dist: np.ndarray, labels: list[int]) -> list[tuple[int, int, int]]:
    """Per anchor: the farthest positive and the closest negative (first index on ties)."""
    triplets = []
    for a, label in enumerate(labels):
        positives = [j for j, other in enumerate(labels) if other == label and j != a]
        negatives = [j for j, other in enumerate(labels) if other != label]
        p = max(positives, key=lambda j: (dist[a, j], -j))
        n = min(negatives, key=lambda j: (dist[a, j], j))
        triplets.append((a, p, n))
    return triplets


def _hinge_mean(dist: np.ndarray, triplets: list[tuple[int, int, int]], margin: float) -> float:
    return sum(max(dist[a, p] - dist[a, n] + margin, 0.0) for a, p, n in triplets) / len(triplets)


def test_trainer_loss_is_id_plus_global_plus_local_mined_on_the_global_distance(tiny_market, tmp_path):
    cfg = aligned_config()
    cfg.loss.local_weight, cfg.loss.margin = 0.5, 0.3
    trainer = EmbeddingTrainer(cfg, tmp_path / "run", tiny_market, show_progress=False)
    trainer.setup()
    gen = torch.Generator().manual_seed(11)
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    out = {"features": torch.randn(9, 5, generator=gen, dtype=torch.float64),
           "logits": torch.randn(9, trainer.num_classes, generator=gen, dtype=torch.float64),
           "local_features": torch.rand(9, 4, 3, generator=gen, dtype=torch.float64) * 3}
    parts = trainer._student_loss(out, torch.tensor(labels), ranking=True)

    features, local = out["features"].numpy(), out["local_features"].numpy()
    global_dist = np.array([[math.dist(u, v) for v in features] for u in features])
    local_dist = np.array([[naive_local_distance(u, v) for v in local] for u in local])
    mined = _hard_triplets(global_dist, labels)
    local_term = _hinge_mean(local_dist, mined, 0.3)
    # The batch is built so that mining on the local distance picks other samples and gives another loss.
    mined_locally = _hard_triplets(local_dist, labels)
    assert mined_locally != mined
    assert abs(_hinge_mean(local_dist, mined_locally, 0.3) - local_term) > 1e-2

    assert set(parts) == {"id", "metric", "local"}
    assert parts["id"].item() == pytest.approx(_label_smoothed_ce(out["logits"].numpy(), labels, 0.1), rel=1e-9)
    assert parts["metric"].item() == pytest.approx(_hinge_mean(global_dist, mined, 0.3), rel=1e-9)
    assert parts["local"].item() == pytest.approx(0.5 * local_term, rel=1e-7)
    # Classification pre-training: the local triplet joins with the global one, not before.
    assert set(trainer._student_loss(out, torch.tensor(labels), ranking=False)) == {"id"}


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"local_dim": 0}, r"loss.local_weight=1.0 needs .* model.local_dim"),
    ({"local_weight": 0.0}, r"model.local_dim=8 .* loss.local_weight"),
    ({"local_weight": -1.0}, r"loss.local_weight=-1.0"),
    ({"select_on": "mAP"}, r"select_on='mAP'"),
    ({"local_dim": 0, "local_weight": 0.0, "select_on": "val_local"}, r"select_on=val_local needs"),
    ({"val_local_weight": -0.5}, r"val_local_weight=-0.5"),
])
def test_inconsistent_local_options_stop_before_loading_data(tmp_path, changes, pattern):
    cfg = aligned_config()
    for key, value in changes.items():
        section = cfg.model if key == "local_dim" else cfg.loss if key == "local_weight" else cfg
        setattr(section, key, value)
    with pytest.raises(ConfigError, match=pattern):
        EmbeddingTrainer(cfg, tmp_path / "run", tmp_path / "no-data-needed", show_progress=False)


# ------------------------------------------------------------------------------- training end to end
@pytest.fixture(scope="module")
def aligned_run(tiny_market, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned") / "run"
    trainer = EmbeddingTrainer(aligned_config(), out, tiny_market, show_progress=False)
    trainer.fit()
    return trainer, out


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_training_logs_loss_local_and_val_local(aligned_run):
    _, out = aligned_run
    rows = _log(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["loss_local"] > 0 and math.isfinite(row["loss_local"])
        assert {"loss_id", "loss_metric"} <= row.keys()
        assert row["loss"] == pytest.approx(row["loss_id"] + row["loss_metric"] + row["loss_local"])
        for key in ("val", "val_local"):
            assert {"rank1", "rank5", "rank10", "mAP", "mINP"} <= row[key].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["selected_on"] == "val"  # best.pt follows the global mAP by default
    assert summary["best"]["mAP"] == max(r["val"]["mAP"] for r in rows)


def test_val_local_equals_naive_global_plus_local_reference(aligned_run, tiny_market):
    _, out = aligned_run
    logged = _log(out)[-1]["val_local"]  # last.pt holds the weights of the last validated epoch
    ext = Extractor(out / "last.pt", device="cpu", flip=True)  # the run validated with flip_tta
    dataset = load_dataset(tiny_market)
    (q_paths, q_pids, q_cams), (g_paths, g_pids, g_cams) = split_arrays(dataset.query), split_arrays(dataset.gallery)
    qf, ql = ext.embed(q_paths, local=True)
    gf, gl = ext.embed(g_paths, local=True)
    assert ql.shape == (len(q_paths), 4, LOCAL_DIM)
    distmat = np.array([[math.dist(qf[i], gf[j]) + naive_local_distance(ql[i], gl[j]) for j in range(len(gf))]
                        for i in range(len(qf))])
    result = evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=len(gf))
    assert logged["mAP"] == pytest.approx(100 * result.mAP, abs=1e-3)
    assert logged["rank1"] == pytest.approx(100 * result.cmc[0], abs=1e-3)


def test_checkpoint_round_trip_keeps_the_local_branch(aligned_run):
    trainer, out = aligned_run
    payload = load_checkpoint(out / "best.pt")
    assert payload["model_cfg"]["local_dim"] == LOCAL_DIM and payload["model_cfg"]["local_pool"] == "max"
    assert any(k.startswith("local_branch.") for k in payload["model"])
    model, _ = model_from_checkpoint(out / "last.pt")
    assert model.local_dim == LOCAL_DIM and model.local_branch.pool == "max"
    x = torch.randn(3, 3, 64, 32)
    trained = trainer.models[0].eval()
    with torch.no_grad():  # same weights; the trained copy runs channels-last, hence float rounding only
        for got, want in zip(model.eval().embed_with_local(x), trained.embed_with_local(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_extractor_local_option(aligned_run, tiny_market, tmp_path):
    _, out = aligned_run
    ext = Extractor(out / "best.pt", device="cpu")
    paths = sorted((tiny_market / "query").glob("*.jpg"))[:3]
    global_only = ext.embed(paths)
    global_features, local_features = ext.embed(paths, local=True)
    assert ext.has_local and local_features.shape == (3, 4, LOCAL_DIM)
    np.testing.assert_allclose(global_features, global_only, atol=1e-6)
    plain_cfg = {"backbone": "simple_cnn", "pooling": "avg", "input_size": (64, 32)}
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model=build_model("embedding", **plain_cfg), model_name="embedding", model_cfg=plain_cfg,
                    epoch=0)
    with pytest.raises(ModelError, match="local branch"):
        Extractor(plain, device="cpu").embed(paths, local=True)


def test_mutual_students_each_train_their_local_branch(tiny_market, tmp_path):
    EmbeddingTrainer(aligned_config(students=2, epochs=1), tmp_path / "dml", tiny_market, show_progress=False).fit()
    row = _log(tmp_path / "dml")[0]
    assert {"loss_s0_local", "loss_s1_local", "loss_mutual_kl"} <= row.keys()
    assert len(row["val_students"]) == len(row["val_local_students"]) == 2
    assert row["val_local"] == row["val_local_students"][0]


# ------------------------------------------------------------------------------------ evaluate / extract
def test_evaluate_local_weight_equals_naive_reference(aligned_run, tiny_market, tmp_path, captured_distmat):
    _, out = aligned_run
    metrics = tmp_path / "eval" / "metrics.json"
    args = ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(tiny_market), "--metric", "l2",
            "--local-weight", "0.7", "--out", str(metrics), "--quiet", "--device", "cpu", "--max-rank", "5"]
    assert main(args) == 0
    arrays = captured_distmat["arrays"]
    qf, gf, ql, gl = (arrays[k] for k in ("query_features", "gallery_features", "query_local", "gallery_local"))
    reference = np.array([[math.dist(qf[i], gf[j]) + 0.7 * naive_local_distance(ql[i], gl[j])
                           for j in range(len(gf))] for i in range(len(qf))])
    np.testing.assert_allclose(captured_distmat["distmat"], reference, atol=1e-5)
    result = evaluate_rank_full(reference, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"],
                                arrays["g_camids"], max_rank=5)
    report = json.loads(metrics.read_text())
    assert report["mAP"] == pytest.approx(100 * result.mAP, abs=1e-3)
    assert report["local_weight"] == 0.7 and report["metric"] == "euclidean"  # "l2": its hidden old name

    # extract writes the local features; evaluate --features ranks with the same distances.
    npz = tmp_path / "feats.npz"
    assert main(["extract", "--checkpoint", str(out / "best.pt"), "--data", str(tiny_market), "--out", str(npz),
                 "--device", "cpu", "--quiet"]) == 0
    with np.load(npz) as saved:
        assert saved["query_local"].shape == ql.shape and saved["gallery_local"].shape == gl.shape
    assert main(["evaluate", "--features", str(npz), "--metric", "l2", "--local-weight", "0.7", "--quiet"]) == 0
    np.testing.assert_allclose(captured_distmat["distmat"], reference, atol=1e-5)


def test_evaluate_local_weight_errors_name_the_problem(aligned_run, tiny_market, tmp_path, capsys):
    _, out = aligned_run
    npz = tmp_path / "feats.npz"
    assert main(["extract", "--checkpoint", str(out / "best.pt"), "--data", str(tiny_market), "--out", str(npz),
                 "--device", "cpu", "--quiet"]) == 0
    with np.load(npz) as saved:
        arrays = {k: saved[k] for k in saved.files if k != "gallery_local"}
    without_local = tmp_path / "global_only.npz"
    np.savez(without_local, **arrays)
    capsys.readouterr()
    assert main(["evaluate", "--features", str(without_local), "--local-weight", "1"]) == 2
    assert "gallery_local" in capsys.readouterr().err
    assert main(["evaluate", "--features", str(npz), "--local-weight", "1", "--rerank", "k_reciprocal"]) == 2
    assert "--rerank" in capsys.readouterr().err
    assert main(["evaluate", "--features", str(npz), "--local-weight", "-1"]) == 2
    assert "--local-weight" in capsys.readouterr().err
    plain_cfg = {"backbone": "simple_cnn", "pooling": "avg", "input_size": (64, 32)}
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model=build_model("embedding", **plain_cfg), model_name="embedding", model_cfg=plain_cfg,
                    epoch=0)
    assert main(["evaluate", "--checkpoint", str(plain), "--data", str(tiny_market), "--local-weight", "1",
                 "--device", "cpu", "--quiet"]) == 2
    assert "local branch" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- config
def test_alignedreid_config_is_the_cuhk03np_recipe_plus_the_local_branch():
    recipe = yaml.safe_load((CONFIGS / "cuhk03np_imagenet.yaml").read_text())
    aligned = yaml.safe_load((CONFIGS / "alignedreid_cuhk03np_cpu.yaml").read_text())
    assert aligned.pop("val_local_weight") == 1.0 and aligned.pop("select_on") == "val"
    assert aligned["model"].pop("local_dim") == 128 and aligned["model"].pop("local_pool") == "max"
    assert aligned["loss"].pop("local_weight") == 1.0
    assert aligned == recipe
    cfg = load_config(TrainConfig, CONFIGS / "alignedreid_cuhk03np_cpu.yaml")
    assert cfg.model.local_dim == 128 and cfg.loss.local_weight == 1.0
