"""The `reidkit` command: the only package that parses arguments. One module per verb group; library code
never imports from here."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
