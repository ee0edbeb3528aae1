"""Issue 25's CUHK03-NP recipes as a user runs them: the 60-minute recipe, the best recipe and the student."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reidkit.checkpoint import load_checkpoint
from reidkit.cli.main import main as cli_main
from reidkit.config import load_config
from reidkit.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_60_minute_recipe_is_the_best_recipes_training_under_the_hours_cap():
    hour = load_config(TrainConfig, CONFIGS / "cuhk03np_cpu.yaml")
    best = load_config(TrainConfig, CONFIGS / "cuhk03np_best.yaml")
    assert 0 < hour.max_minutes <= 60 and best.max_minutes <= 360
    assert dataclasses.replace(hour, max_minutes=best.max_minutes) == best
    assert (hour.model.backbone, hour.model.pretrained) == ("osnet_ain_x1_0", True)  # the vendored 0277 start


def test_the_student_learns_from_the_best_recipe_at_the_teachers_embedding_size():
    student = load_config(TrainConfig, CONFIGS / "cuhk03np_student.yaml")
    assert student.distill.teacher == "runs/best/best.pt"
    assert student.model.backbone == "osnet_ain_x0_5" and student.model.pretrained is True


def test_the_60_minute_recipe_runs_as_it_is_with_no_val_on_every_training_identity(tiny_market, tmp_path):
    """`reidkit train --config configs/cuhk03np_cpu.yaml --no-val` on a plain training folder (as the CUHK03-NP
    one), shrunk only in epochs, batch and input size: every identity of the folder (counted from the file names) is
    in the classifier. Without --no-val the recipe would carve `data.val_ids` identities out (4 here)."""
    folder = tiny_market / "bounding_box_train"
    train_ids = sorted({int(p.name.split("_")[0]) for p in folder.glob("*.jpg")})
    shrink = ["--quiet", "optim.epochs=1", "optim.warmup_epochs=0", "optim.p=4", "optim.k=2", "data.height=64",
              "data.width=32", "data.val_ids=4", "num_threads=1"]
    runs = {}
    for name, flag in (("no_val", ["--no-val"]), ("carved", [])):
        out = tmp_path / name
        assert cli_main(["train", "--config", str(CONFIGS / "cuhk03np_cpu.yaml"), "--data", str(folder),
                         "--out", str(out), *flag, *shrink]) == 0
        runs[name] = load_checkpoint(out / "last.pt")
    assert sorted(runs["no_val"]["extra"]["label_map"]) == train_ids
    assert len(runs["carved"]["extra"]["label_map"]) == len(train_ids) - 4
    checkpoint = runs["no_val"]
    assert checkpoint["model_cfg"]["backbone"] == "osnet_ain_x1_0"
