"""Verbs for video ground truth: synth-video, evaluate-tracks (being built; see the video issue)."""

from __future__ import annotations

import argparse

from ..errors import ReIDError


def _not_ready(args: argparse.Namespace) -> None:
    raise ReIDError(f"`reidkit {args.command}` is not available yet in this build")


def add_synth_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)


def add_evaluate_tracks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)
