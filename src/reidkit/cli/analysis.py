"""Verbs for video: verify, calibrate, cluster, explain (being built; see the verification issue)."""

from __future__ import annotations

import argparse

from ..errors import ReIDError


def _not_ready(args: argparse.Namespace) -> None:
    raise ReIDError(f"`reidkit {args.command}` is not available yet in this build")


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)
