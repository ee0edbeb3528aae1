"""The README's Quick start and Python snippet, run as a newcomer would, in a fresh folder.

The commands are taken from README.md (not copied here), so an edit to the README is tested as printed. To stay
fast they run on a small synthetic dataset instead of ../shared, with smaller values for the size options and a
few config overrides appended (a later `section.key=value` wins); the verbs and options are the README's.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from reidkit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

SHARED_TRAIN = "../shared/datasets/cuhk03np-detected/bounding_box_train"
SMALLER = {"--train-ids": "8", "--test-ids": "4", "--val-ids": "3"}  # option -> value used here
# Appended to every `train`: one short epoch on small images, so the whole Quick start takes seconds.
SHORT_TRAINING = ["optim.epochs=1", "optim.pretrain_epochs=0", "optim.warmup_epochs=0", "optim.p=4", "optim.k=2",
                  "data.height=64", "data.width=32", "eval_every=1", "max_minutes=0"]


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def quick_start_commands() -> list[list[str]]:
    """The `reidkit ...` lines of the Quick start's bash block: continuations joined, comments dropped."""
    script = _code_blocks(_section("Quick start"), "bash")[0].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in script.splitlines()]
    return [c for c in commands if c and c[0] == "reidkit"]


def _shortened(argv: list[str], synth_root: str) -> list[str]:
    out = []
    for i, word in enumerate(argv):
        previous = argv[i - 1] if i else ""
        out.append(SMALLER.get(previous, synth_root if word == SHARED_TRAIN else word))
    return out + (SHORT_TRAINING if argv[0] == "train" else [])


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Run the Quick start in an empty folder (with the repo's configs/); returns it and each verb's output."""
    folder = tmp_path_factory.mktemp("newcomer")
    (folder / "configs").symlink_to(ROOT / "configs")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    outputs: dict[str, str] = {}
    try:
        for command in quick_start_commands():
            argv = _shortened(command[1:], "data/synth/bounding_box_train")
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                code = main(argv)
            assert code == 0, f"`reidkit {' '.join(argv)}` exited with {code}:\n{buffer.getvalue()}"
            outputs[" ".join(argv[:2])] = outputs.get(" ".join(argv[:2]), "") + buffer.getvalue()
    finally:
        mp.undo()
    return folder, outputs


def test_quick_start_lists_the_newcomer_path():
    verbs = [c[1] for c in quick_start_commands()]
    assert verbs == ["synth", "split", "train", "train", "extract", "evaluate", "evaluate"]


def test_quick_start_runs_and_train_validates_on_the_split_evaluate_uses(quick_start):
    folder, outputs = quick_start
    split = folder / "data" / "cuhk03-val"
    queries = len(list((split / "query").glob("*.jpg")))
    gallery = len(list((split / "bounding_box_test").glob("*.jpg")))
    assert queries > 0 and gallery > 0
    # The trainer says which query/gallery it validates on: the split's own, not a second carve-out.
    train_out = outputs["train --config"]
    assert f"query {queries:,}, gallery {gallery:,}" in train_out, train_out
    results = json.loads((folder / "runs" / "cuhk03" / "results.json").read_text())
    assert results["num_queries"] == queries
    assert (folder / "runs" / "cuhk03" / "best.pt").is_file()


def test_quick_start_writes_nothing_outside_data_and_runs(quick_start):
    folder, _ = quick_start
    assert sorted(p.name for p in folder.iterdir()) == ["configs", "data", "runs"]


def test_python_snippet_runs_as_printed(quick_start, monkeypatch, capsys):
    folder, _ = quick_start
    snippet = _code_blocks(_section("Quick start"), "python")[0]
    monkeypatch.chdir(folder)
    # The snippet is run verbatim; only the config it loads is shortened, by the same appended overrides.
    from reidkit import config as config_module

    load_config = config_module.load_config
    monkeypatch.setattr(config_module, "load_config",
                        lambda cls, path, overrides=(): load_config(cls, path, [*overrides, *SHORT_TRAINING]))
    exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"rank-1 (\d+\.\d)%  mAP (\d+\.\d)%", printed)
    assert match, printed
    assert 0 <= float(match.group(1)) <= 100 and 0 <= float(match.group(2)) <= 100


def test_ci_runs_the_readme_test_command():
    """What CI runs is what the README tells a contributor to run."""
    fresh = _code_blocks(_section("Fresh machine: the two commands"), "bash")[0]
    readme_command = next(line.split("#")[0].strip() for line in fresh.splitlines() if "run_tests" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [readme_command]


def test_video_verification_and_web_commands_parse():
    """Every `reidkit ...` line of the README's video / verification / web section names a real verb with real
    options (parsed, not run: they need a trained model and videos)."""
    from reidkit.cli.main import build_parser

    script = _code_blocks(_section("Video, verification, clustering, the web app"), "bash")[0].replace("\\\n", " ")
    commands = [c for c in (shlex.split(line, comments=True) for line in script.splitlines()) if c]
    assert commands and all(c[0] == "reidkit" for c in commands)
    verbs = set()
    for argv in commands:
        args = build_parser(argv[1]).parse_args(argv[1:])
        assert args.func is not None, argv
        verbs.add(argv[1])
    assert {"track", "find", "verify", "cluster", "explain", "serve", "evaluate-tracks"} <= verbs


def test_methods_and_scale_commands_parse():
    """Every `reidkit ...` line of the README's methods / scale-out section parses with the real verbs and options,
    and every config it names exists."""
    from reidkit.cli.main import build_parser

    script = _code_blocks(_section("More methods, a re-ID start point, beyond one machine"), "bash")[0]
    commands = [c for c in (shlex.split(line, comments=True) for line in script.splitlines()) if c]
    assert commands and all(c[0] == "reidkit" for c in commands)
    for argv in commands:
        args = build_parser(argv[1]).parse_args(argv[1:])
        assert args.func is not None, argv
        if getattr(args, "config", None) is not None:
            assert (ROOT / args.config).is_file(), args.config
    assert {"train", "synth", "evaluate", "extract", "merge-features", "ivf", "track"} <= {c[1] for c in commands}
