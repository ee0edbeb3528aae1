"""The `serve` verb (being built; see the web app issue)."""

from __future__ import annotations

import argparse

from ..errors import ReIDError


def _not_ready(args: argparse.Namespace) -> None:
    raise ReIDError(f"`reidkit {args.command}` is not available yet in this build")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)
