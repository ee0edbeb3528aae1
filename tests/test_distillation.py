"""Knowledge distillation: DarkRank and similarity losses against plain-loop formulas, teacher targets and their
cache, the embedding task's distillation terms, errors named before any image is loaded.

References: the Plackett-Luce likelihood of the teacher's ranking written as the product in the DarkRank paper
(one anchor at a time, Python floats), cosine similarities by loops, a teacher's embeddings computed by hand
(model forward of the image and its mirror, averaged, unit length).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.checkpoint import load_checkpoint, model_from_checkpoint
from reidkit.data import load_dataset
from reidkit.data.images import load_image_tensor
from reidkit.data.transforms import AugmentConfig
from reidkit.errors import ConfigError, TrainingError
from reidkit.losses import DarkRankLoss, FeatureDistillationLoss, SimilarityDistillationLoss, build_loss
from reidkit.training.config import DataConfig, DistillConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import EmbeddingTrainer


def _unit(rows: np.ndarray) -> list[list[float]]:
    return [list(r / math.sqrt(sum(v * v for v in r))) for r in rows]


def _score(u: list[float], v: list[float], alpha: float, beta: float) -> float:
    return -alpha * math.dist(u, v) ** beta


def naive_darkrank(student: np.ndarray, teacher: np.ndarray, alpha: float, beta: float, list_size: int) -> float:
    """-log P(teacher's ranking | student's scores) under Plackett-Luce, per anchor, averaged over anchors and
    over the first list_size positions."""
    s, t = _unit(student), _unit(teacher)
    n, total = len(s), 0.0
    for q in range(n):
        others = [i for i in range(n) if i != q]
        ranking = sorted(others, key=lambda i: -_score(t[q], t[i], alpha, beta))
        scores = [_score(s[q], s[i], alpha, beta) for i in ranking]
        positions = len(ranking) if list_size == 0 else min(list_size, len(ranking))
        nll = 0.0
        for j in range(positions):
            nll += math.log(sum(math.exp(x) for x in scores[j:])) - scores[j]
        total += nll / positions
    return total / n


@pytest.mark.parametrize(("alpha", "beta", "list_size"), [(3.0, 3.0, 0), (1.0, 2.0, 0), (3.0, 3.0, 3)])
def test_darkrank_equals_the_plackett_luce_likelihood_by_loops(alpha, beta, list_size):
    gen = torch.Generator().manual_seed(5)
    student = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    teacher = torch.randn(7, 9, generator=gen, dtype=torch.float64)  # another width: only relations compare
    loss = DarkRankLoss(alpha=alpha, beta=beta, list_size=list_size)(student, teacher)
    assert loss.item() == pytest.approx(naive_darkrank(student.numpy(), teacher.numpy(), alpha, beta, list_size),
                                        rel=1e-5)


def test_darkrank_is_lowest_for_a_student_that_ranks_like_the_teacher_and_leaves_the_teacher_alone():
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 6, generator=gen)
    same = DarkRankLoss()(teacher.clone(), teacher)
    shuffled = DarkRankLoss()(teacher[torch.randperm(8, generator=gen)], teacher)
    assert same.item() < shuffled.item()
    student, target = torch.randn(8, 4, requires_grad=True), teacher.clone().requires_grad_(True)
    DarkRankLoss()(student, target).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and target.grad is None


def test_similarity_distillation_equals_loops():
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    teacher = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    s, t = _unit(student.numpy()), _unit(teacher.numpy())
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    expected = sum((cos(s[i], s[j]) - cos(t[i], t[j])) ** 2 for i, j in pairs) / len(pairs)
    assert SimilarityDistillationLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-9)


def naive_feature_distillation(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean over images of 1 - cos(student_i, teacher_i), with the cosine written as a loop."""
    total = 0.0
    for s, t in zip(student, teacher):
        dot = sum(a * b for a, b in zip(s, t))
        total += 1.0 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t)))
    return total / len(student)


def test_feature_distillation_equals_loops_and_is_zero_for_a_rescaled_teacher():
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    loss = FeatureDistillationLoss()(student, teacher)
    assert loss.item() == pytest.approx(naive_feature_distillation(student.detach().numpy(), teacher.numpy()),
                                        rel=1e-9)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert FeatureDistillationLoss()(3.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_distillation_losses_refuse_bad_input():
    with pytest.raises(TrainingError, match="same N samples"):
        DarkRankLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TrainingError, match="need >= 3"):
        SimilarityDistillationLoss()(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ConfigError, match="alpha=0"):
        build_loss("darkrank", alpha=0)
    with pytest.raises(TrainingError, match="student's embeddings have 3 dimensions and the teacher's 5"):
        FeatureDistillationLoss()(torch.randn(4, 3), torch.randn(4, 5))


# ------------------------------------------------------------------------------------------- the task
def distill_config(teacher: Path | str, **distill) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
        data=DataConfig(validation="dataset", height=64, width=32),
        loss=LossConfig(),
        optim=OptimConfig(epochs=2, p=4, k=2, lr=1e-3, warmup_epochs=0),
        distill=DistillConfig(teacher=str(teacher), **distill),
        num_threads=1, eval_every=1,
    )


def _by_hand_teacher_embeddings(checkpoint: Path, paths: list[str], views: tuple[bool, ...] = (False, True)
                                ) -> np.ndarray:
    """The teacher's unit embeddings of the images, summed over `views` (False: as is, True: mirrored)."""
    model = model_from_checkpoint(checkpoint)[0].eval()
    images = load_image_tensor(paths, tuple(model.input_size), "stretch", False).float() / 255
    x = (images - torch.tensor(model.input_mean).view(1, 3, 1, 1)) / torch.tensor(model.input_std).view(1, 3, 1, 1)
    with torch.no_grad():
        both = sum(model(x.flip(3) if mirrored else x) for mirrored in views)
    both = both.numpy().astype(np.float64)
    return both / np.linalg.norm(both, axis=1, keepdims=True)


def test_teacher_targets_are_the_teachers_flip_averaged_embeddings_and_are_cached(tiny_market, small_checkpoint,
                                                                                tmp_path, monkeypatch):
    monkeypatch.setenv("REIDKIT_CACHE", str(tmp_path / "cache"))
    trainer = EmbeddingTrainer(distill_config(small_checkpoint, similarity_weight=0.5, feature_weight=0.25),
                               tmp_path / "run", tiny_market, show_progress=False)
    trainer.setup()
    train_paths = [r.path for r in sorted(load_dataset(tiny_market).train, key=lambda r: r.path)]
    by_path = dict(zip(trainer.train_paths, trainer.teacher_features.numpy()))
    expected = _by_hand_teacher_embeddings(small_checkpoint, train_paths)
    got = np.stack([by_path[p] for p in train_paths])
    assert np.abs(got - expected).max() < 1e-5
    cached = list((tmp_path / "cache" / "reidkit" / "teacher").glob("*.npy"))
    assert len(cached) == 1

    # The batch's terms on the batch items' teacher rows: DarkRank and the similarity loss on the features before
    # the BNNeck, the feature term on the retrieval embedding after it.
    gen = torch.Generator().manual_seed(3)
    trainer.task.batch_items = np.array([0, 1, 2, 3, 4, 5])
    rows = trainer.teacher_features[:6].numpy().astype(np.float64)
    out = {"features": torch.randn(6, 4, generator=gen, dtype=torch.float64),
           "bn_features": torch.randn(6, rows.shape[1], generator=gen, dtype=torch.float64),
           "logits": torch.randn(6, trainer.num_classes, generator=gen, dtype=torch.float64)}
    parts = trainer._student_loss(out, torch.tensor([0, 0, 1, 1, 2, 2]), ranking=False)
    assert set(parts) == {"id", "distill_darkrank", "distill_similarity", "distill_feature"}
    assert parts["distill_darkrank"].item() == pytest.approx(
        naive_darkrank(out["features"].numpy(), rows, 3.0, 3.0, 0), rel=1e-5)
    assert parts["distill_feature"].item() == pytest.approx(
        0.25 * naive_feature_distillation(out["bn_features"].numpy(), rows), rel=1e-5)

    # Reused, not recomputed: a poisoned cache file is what the next run reads.
    np.save(cached[0], np.zeros_like(np.load(cached[0])))
    again = EmbeddingTrainer(distill_config(small_checkpoint), tmp_path / "run2", tiny_market, show_progress=False)
    again.setup()
    assert not again.teacher_features.any()


def test_distillation_trains_end_to_end_and_records_the_teacher(tiny_market, small_checkpoint, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("REIDKIT_CACHE", str(tmp_path / "cache"))
    cfg = distill_config(small_checkpoint, darkrank_weight=2.0)
    cfg.optim.epochs = 3
    EmbeddingTrainer(cfg, tmp_path / "run", tiny_market, show_progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "loss_distill_darkrank" in r]
    assert len(epochs) == 3 and all(math.isfinite(r["loss_distill_darkrank"]) for r in epochs)
    extra = load_checkpoint(tmp_path / "run" / "best.pt")["extra"]
    assert extra["distilled_from"] == str(small_checkpoint.resolve())


def _record_targets(trainer: EmbeddingTrainer, monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """(batch items, online teacher targets) of every step the trainer takes."""
    task, seen = trainer.task, []
    original = task._student_loss

    def spy(out, labels, ranking, student=0):
        seen.append((np.asarray(task.batch_items).copy(), task.batch_targets.numpy().astype(np.float64)))
        return original(out, labels, ranking, student)

    monkeypatch.setattr(task, "_student_loss", spy)
    return seen


def test_an_online_teacher_embeds_each_augmented_view(tiny_market, small_checkpoint, tmp_path, monkeypatch):
    """Augmented by mirroring only, each target is the teacher's embedding of the image as it is or mirrored,
    whichever view the student was given; no un-augmented pass is computed or cached."""
    monkeypatch.setenv("REIDKIT_CACHE", str(tmp_path / "cache"))
    cfg = distill_config(small_checkpoint, online=True, similarity_weight=0.5)
    cfg.augment = AugmentConfig(flip=True, pad=0, color_jitter=0.0, erasing_prob=0.0)
    trainer = EmbeddingTrainer(cfg, tmp_path / "run", tiny_market, show_progress=False)
    seen = _record_targets(trainer, monkeypatch)
    trainer.fit()
    paths = trainer.task.train_paths
    as_is = _by_hand_teacher_embeddings(small_checkpoint, paths, (False,))
    mirrored = _by_hand_teacher_embeddings(small_checkpoint, paths, (True,))
    matched = []
    for items, targets in seen:
        d_as_is = np.abs(targets - as_is[items]).max(axis=1)
        d_mirrored = np.abs(targets - mirrored[items]).max(axis=1)
        assert (np.minimum(d_as_is, d_mirrored) < 1e-5).all()
        matched += list(d_mirrored < d_as_is)
    assert len(seen) >= 2 and 0 < sum(matched) < len(matched)  # both views occurred
    assert not (tmp_path / "cache").exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_distill_similarity"]) for r in rows if "epoch_seconds" in r)


def test_an_online_teacher_of_another_input_size_sees_the_view_resized(tiny_market, tmp_path, monkeypatch):
    """A 128x64 teacher of a 64x32 student: each target is, of all training images, nearest to the teacher's
    embedding of its own image decoded at 128x64 (the file resized by the image loader, not by the trainer)."""
    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    torch.manual_seed(0)
    model_cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (128, 64)}
    teacher = tmp_path / "teacher128.pt"
    save_checkpoint(teacher, model=build_model("embedding", **model_cfg).eval(), model_name="embedding",
                    model_cfg=model_cfg, epoch=0)
    cfg = distill_config(teacher, online=True)
    cfg.augment = AugmentConfig(flip=False, pad=0, color_jitter=0.0, erasing_prob=0.0)
    cfg.optim.epochs = 1
    trainer = EmbeddingTrainer(cfg, tmp_path / "run", tiny_market, show_progress=False)
    seen = _record_targets(trainer, monkeypatch)
    trainer.fit()
    reference = _by_hand_teacher_embeddings(teacher, trainer.task.train_paths, (False,))
    for items, targets in seen:
        similarity = targets @ reference.T
        assert (similarity.argmax(axis=1) == items).all()
        assert (similarity[np.arange(len(items)), items] > 0.99).all()


@pytest.mark.parametrize(("teacher", "changes", "pattern"), [
    ("missing.pt", {}, r"distill.teacher='.*missing.pt': file not found"),
    (None, {"darkrank_weight": 0.0}, r"nothing would be distilled"),
    (None, {"darkrank_weight": -1.0}, r"distill.darkrank_weight"),
    (None, {"feature_weight": -0.5}, r"distill.feature_weight"),
])
def test_distillation_errors_stop_before_loading_data(small_checkpoint, tmp_path, teacher, changes, pattern):
    cfg = distill_config(tmp_path / teacher if teacher else small_checkpoint, **changes)
    with pytest.raises(ConfigError, match=pattern):
        EmbeddingTrainer(cfg, tmp_path / "run", tmp_path / "no-data-needed", show_progress=False)


def test_the_tracklet_task_refuses_distillation(small_checkpoint, tmp_path):
    from reidkit.training.config import TrackletTrainConfig
    from reidkit.training.tasks import TrackletTask

    cfg = TrackletTrainConfig(distill=DistillConfig(teacher=str(small_checkpoint)))
    with pytest.raises(ConfigError, match="tracklet task does not distil"):
        TrackletTask(cfg, tmp_path / "no-data-needed", show_progress=False)


def test_a_yaml_config_with_a_distill_section_loads(tmp_path, small_checkpoint):
    from reidkit.config import load_config

    path = tmp_path / "student.yaml"
    path.write_text(f"distill:\n  teacher: {small_checkpoint}\n  darkrank_weight: 2.5\n")
    cfg = load_config(TrainConfig, path, ["distill.similarity_weight=0.5"])
    assert (cfg.distill.teacher, cfg.distill.darkrank_weight, cfg.distill.similarity_weight) == \
        (str(small_checkpoint), 2.5, 0.5)
