"""Bad input and faults as a hostile user meets them (issue #21 items 3 and 5): nothing is overwritten without
asking, configs and devices are checked before any work, OS errors name the path, and each case ends with exit 2
and a message naming the key / file and the reason -- never a traceback, never a lost earlier result."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidkit.cli.main import main
from reidkit.errors import TrainingError
from reidkit.training.runlog import read_log

# A run of one tiny epoch (seconds on a CPU).
TINY_FLAGS = ["--quiet", "--device", "cpu"]
TINY = ["model.backbone=simple_cnn", "model.pretrained=false", "optim.epochs=1",
        "optim.p=4", "optim.k=2", "optim.warmup_epochs=0", "data.height=32", "data.width=16",
        "data.validation=dataset", "num_threads=1"]


def _train(data: Path, out: Path, *extra: str) -> int:
    """`extra`: options (`--resume`, `--device X`) and overrides (`key=value`), in any order."""
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    flags = [e for e in extra if e not in overrides]
    return main(["train", "--data", str(data), "--out", str(out), *TINY_FLAGS, *flags, *TINY, *overrides])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------------ item 3: no overwrite

def test_train_refuses_an_earlier_run_and_keeps_it(tiny_market, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_market, out) == 0
    before = _snapshot(out)
    assert {"best.pt", "last.pt", "log.jsonl"} <= set(before)
    capsys.readouterr()
    assert _train(tiny_market, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before  # not one byte of the earlier run changed


def test_train_overwrite_replaces_the_earlier_run(tiny_market, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_market, out) == 0
    (out / "best_student1.pt").write_bytes(b"stale")  # a file of the old run the new one would not rewrite
    assert _train(tiny_market, out, "--overwrite", "seed=1") == 0
    assert not (out / "best_student1.pt").exists()
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]


def test_resume_without_last_pt_refuses_before_any_work(tmp_path, capsys):
    out = tmp_path / "fresh"
    # The data folder does not exist either: the run-folder check must come first (no data is loaded).
    assert _train(tmp_path / "no-data", out, "--resume") == 2
    err = capsys.readouterr().err
    assert str(out / "last.pt") in err and "not found" in err
    assert not out.exists()


def _synth(out: Path, seed: int = 0) -> int:
    return main(["synth", "--out", str(out), "--train-ids", "2", "--test-ids", "2", "--images-per-camera", "2",
                 "--height", "32", "--width", "16", "--seed", str(seed), "--quiet"])


def test_synth_keeps_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "synth"
    assert _synth(out) == 0
    notes = out / "bounding_box_train" / "my_notes.txt"
    notes.write_text("mine")
    assert _synth(out) == 0  # same settings: the dataset is complete, nothing is rewritten
    assert notes.read_text() == "mine"
    capsys.readouterr()
    assert _synth(out, seed=1) == 2  # other settings would replace the folder: refused
    err = capsys.readouterr().err
    assert str(out) in err and "my_notes.txt" in err
    assert notes.read_text() == "mine"
    notes.unlink()
    assert _synth(out, seed=1) == 0  # only the generator's own files: regenerated as before
    assert json.loads((out / "synth.json").read_text())["config"]["seed"] == 1


# ------------------------------------------------------------------------------ item 5: validated up front

@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("optim.accum_steps=0", "optim.accum_steps", ">= 1"),
    ("eval_every=0", "eval_every", ">= 1"),
    ("optim.lr=-0.001", "optim.lr", "> 0"),
    ("data.height=0", "data.height", ">= 1"),
    ("data.width=-8", "data.width", ">= 1"),
    ("optim.epochs=0", "optim.epochs", ">= 1"),
    ("model.dropout=1.5", "model.dropout", "< 1"),
])
def test_out_of_range_config_is_refused_before_any_work(override, key, allowed, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path / "no-data", out, override) == 2  # a missing data folder would be reported later
    err = capsys.readouterr().err
    assert f"{key}=" in err and allowed in err
    assert not out.exists()


def test_pair_config_is_checked_too(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), "--quiet",
                 "model.name=idla", "sampling.ids_per_batch=0"]) == 2
    assert "sampling.ids_per_batch=0" in capsys.readouterr().err


def test_yaml_whose_top_level_is_not_a_mapping(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- optim\n- model\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "mapping" in err


@pytest.mark.parametrize("device", ["banana", "cuda:7", "cpu:x"])
def test_unknown_device_is_a_clear_error(device, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert _train(tmp_path / "no-data", tmp_path / "run", "--device", device) == 2
    err = capsys.readouterr().err
    assert f"device {device!r}" in err and "choose" in err


def test_torn_last_log_line_does_not_block_resume(tiny_market, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_market, out) == 0
    with open(out / "log.jsonl", "a") as fh:  # a kill in the middle of epoch 2's append
        fh.write('{"epoch": 2, "loss": 0.')
    with pytest.warns(UserWarning, match="line 2 is incomplete"):
        assert _train(tiny_market, out, "--resume", "optim.epochs=2") == 0
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_corrupt_log_line_elsewhere_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(TrainingError, match=r"log\.jsonl: line 2 is not a log row"):
        read_log(log)
    log.write_text('{"epoch": 1}\n\n{"epoch": 2}\n{"epo')
    with pytest.warns(UserWarning, match="line 4 is incomplete"):
        assert read_log(log) == [{"epoch": 1}, {"epoch": 2}]


# ------------------------------------------------------------------------------------------------ OS errors

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from reidkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_names_the_file_and_keeps_the_earlier_result(tiny_market, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk (works as root, unlike a read-only chmod)."""
    manifest = tmp_path / "split.csv"
    argv = ["split", "--data", str(tiny_market / "bounding_box_train"), "--out", str(manifest), "--format",
            "manifest", "--val-ids", "3", "--quiet"]
    assert main(argv) == 0
    earlier = manifest.read_bytes()
    assert len(earlier) > 200
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=200), *argv[:-3], "--val-ids", "4"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {manifest}: ") and "too large" in result.stderr.lower()
    assert manifest.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_full_disk_while_training_keeps_the_earlier_checkpoints(tiny_market, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_market, out) == 0
    earlier = _snapshot(out)
    limit = len(earlier["last.pt"]) // 2  # room for config.json and the log, not for a checkpoint
    assert limit > 4 * len(earlier["config.json"])
    argv = ["train", "--data", str(tiny_market), "--out", str(out), *TINY_FLAGS, "--resume", *TINY, "optim.epochs=2"]
    result = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=limit), *argv], capture_output=True,
                            text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line in (f"error: {out / name}: File too large" for name in ("best.pt", "last.pt"))
    assert {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")} == \
        {name: earlier[name] for name in ("best.pt", "last.pt")}


def test_full_disk_during_synth_keeps_the_earlier_dataset(tmp_path):
    out = tmp_path / "synth"
    assert _synth(out) == 0
    earlier = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = ["synth", "--out", str(out), "--train-ids", "2", "--test-ids", "2", "--images-per-camera", "2",
            "--height", "64", "--width", "32", "--seed", "1", "--quiet"]  # 64x32 JPEGs exceed the limit
    result = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=600), *argv], capture_output=True,
                            text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"error: {out}: File too large\n")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folder left


def test_full_disk_during_split_names_the_output_folder(tiny_market, tmp_path):
    out = tmp_path / "split"
    argv = ["split", "--data", str(tiny_market / "bounding_box_train"), "--out", str(out), "--val-ids", "3",
            "--quiet"]
    result = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=500), *argv], capture_output=True,
                            text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"error: {out}: File too large\n")
    assert list(tmp_path.iterdir()) == []  # neither a partial dataset nor its temporary folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tiny_market, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["split", "--data", str(tiny_market / "bounding_box_train"), "--out", str(folder / "s.csv"),
                     "--format", "manifest", "--val-ids", "3", "--quiet"]) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert str(folder) in err and "Permission denied" in err


def test_a_folder_where_a_file_belongs(tiny_market, tmp_path, capsys):
    out = tmp_path / "taken.csv"
    (out / "child").mkdir(parents=True)
    assert main(["split", "--data", str(tiny_market / "bounding_box_train"), "--out", str(out), "--format",
                 "manifest", "--val-ids", "3", "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {out}: Is a directory\n"  # IsADirectoryError, the target named
    assert (out / "child").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.csv"]  # no temporary file left


_FULL_DISK_VERBS = {  # verb -> argv builder (checkpoint, data, out folder); each writes its result under `out`
    "extract": lambda ckpt, data, out: ["extract", "--model", ckpt, "--data", data, "--out", f"{out}/f.npz"],
    "evaluate": lambda ckpt, data, out: ["evaluate", "--model", ckpt, "--data", data, "--out", f"{out}/r.json"],
    "index build": lambda ckpt, data, out: ["index", "build", "--model", ckpt, "--data", f"{data}/bounding_box_test",
                                            "--index", f"{out}/idx"],
    "export": lambda ckpt, data, out: ["export", "--model", ckpt, "--out", f"{out}/m.onnx"],
}


@pytest.mark.parametrize("verb", sorted(_FULL_DISK_VERBS))
def test_full_disk_in_every_writing_verb_is_a_clear_error(verb, tiny_market, small_checkpoint, tmp_path):
    """A 1 KiB file-size limit stands in for a full disk: exit 2, `error: <path under out>: <reason>`, no traceback,
    and nothing half-written left in the output folder."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [*_FULL_DISK_VERBS[verb](str(small_checkpoint), str(tiny_market), str(out)), "--quiet"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    result = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=1024), *argv], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {out}"), last_line
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > 0 and p.name.startswith(".")]
    assert leftovers == []


def _read_only_mount_works(folder: Path) -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {folder} {folder} && "
                            f"mount -o remount,bind,ro {folder} && ! touch {folder}/probe"],
                           capture_output=True, timeout=30) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0 and not (folder / "probe").exists()


def test_read_only_folder_via_a_read_only_mount(tiny_market, tmp_path):
    """As root a chmod does not stop writes; a read-only bind mount in a private mount namespace does."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if not _read_only_mount_works(folder):
        pytest.skip("no private read-only bind mount here (needs unshare -m with mount rights)")
    out = folder / "s.csv"
    argv = ["split", "--data", str(tiny_market / "bounding_box_train"), "--out", str(out), "--format",
            "manifest", "--val-ids", "3", "--quiet"]
    assert main(argv) == 0
    earlier = out.read_bytes()
    runner = shlex.join([sys.executable, "-c", _LIMITED.format(limit=1 << 30), *argv[:-3], "--val-ids", "4"])
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {folder} {folder} && "
                             f"mount -o remount,bind,ro {folder} && exec {runner}"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {folder}")
    assert "Read-only file system" in result.stderr
    assert out.read_bytes() == earlier
