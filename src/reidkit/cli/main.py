"""The `reidkit` command: the verb table, the top-level parser and how errors reach the user.

Each verb's options and handler live in its verb-group module (data, train, demo, evaluate, search, export). A
module is imported only when its verb runs (or for a full `build_parser()`), so `reidkit --help`, `--version` and
the light verbs start without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import ReIDError
from .options import ArgumentParser, check_required

# verb -> (module in reidkit.cli, function adding the verb's options and handler, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "synth": ("data", "add_synth_arguments", "generate a synthetic pedestrian dataset (Market-1501 layout)"),
    "split": ("data", "add_split_arguments",
              "carve a validation query/gallery out of a training folder by identity"),
    "train": ("train", "add_train_arguments", "train a model from a YAML config (overrides: section.key=value)"),
    "extract": ("extract", "add_extract_arguments",
                "embed the query/gallery (or all) images of a dataset with a model"),
    "merge-features": ("extract", "add_merge_arguments",
                       "merge the parts of a sharded `extract --shard i/n` into one .npz, checking completeness"),
    "evaluate": ("evaluate", "add_evaluate_arguments",
                 "rank-k / mAP / mINP from a distance matrix, features or a model"),
    "demo": ("demo", "add_demo_arguments", "synthetic data -> train -> evaluate -> report folder"),
    "verify": ("analysis", "add_verify_arguments", "probability that two crops show the same person"),
    "calibrate": ("analysis", "add_calibrate_arguments",
                  "fit a model's verification calibration on validation pairs; ROC / DET curves"),
    "cluster": ("analysis", "add_cluster_arguments", "group unlabelled person crops into identities"),
    "explain": ("analysis", "add_explain_arguments", "picture of which image regions make two crops match"),
    "synth-video": ("video_data", "add_synth_video_arguments",
                    "synthetic multi-camera videos with exact MOT ground truth and global ids"),
    "track": ("video", "add_track_arguments",
              "detect, track and re-identify people across camera videos (global ids)"),
    "find": ("video", "add_find_arguments", "rank the sightings (tracklets) of a person in a track run"),
    "evaluate-tracks": ("video_data", "add_evaluate_tracks_arguments",
                        "HOTA / IDF1 / MOTA of tracks against ground truth"),
    "serve": ("web", "add_serve_arguments", "web app + JSON API: search, sightings, verification (loopback)"),
}
# Verb groups that register their verbs themselves (light modules: imported for every parser).
SELF_REGISTERING = (("search", "add_search_parsers"),)  # index build|add|remove|info, search, export


def _adder(module: str, function: str) -> Callable[..., None]:
    return getattr(importlib.import_module(f"reidkit.cli.{module}"), function)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The `reidkit` parser with every verb's options (verb=None), or only `verb`'s: the others are listed by name
    and help but their modules are not imported (verb="" imports none)."""
    parser = ArgumentParser(prog="reidkit", description="Person re-identification toolkit.")
    parser.add_argument("--version", action="version", version=f"reidkit {__version__}",
                        help="print the installed reidkit version and exit")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name, (module, function, help) in VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        if verb is None or verb == name:
            _adder(module, function)(p)
    for module, function in SELF_REGISTERING:
        _adder(module, function)(sub)
    return parser


def _chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb on the command line: the first word that is not an option (top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin-wait make torch 3-10x slower whenever another process holds a core (measured on
    # 2-core machines); passive waiting costs next to nothing when the machine is idle. Must precede `import torch`.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(build_parser(_chosen_verb(argv) or ""), argv)
        sys.stdout.flush()  # a reader that left surfaces here, not as a traceback at interpreter exit
    except BrokenPipeError:  # `reidkit ... | head`: the reader left; nothing more to say
        _silence_stdout()
        return 0
    except SystemExit:  # --help, --version, usage errors: argparse printed and exits
        _flush_quietly()
        raise
    return code


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # `reidkit` alone: show what there is to run
        parser.print_help()
        return 2
    check_required(args)
    try:
        args.func(args)
    except ReIDError as exc:  # bad input: a message naming the file or argument, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # read-only folder, full disk, a folder where a file belongs: the path and the reason
        if exc.filename is None:  # not about a file: a bug worth its traceback
            raise
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
        print(f"error: {target}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; pointing it at devnull keeps that flush from raising a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured, replaced): nothing is flushed at exit
        pass


if __name__ == "__main__":
    sys.exit(main())
