"""The `reidkit` command: the only package that parses arguments. One module per verb group (data, train, demo,
evaluate, search, export), the verb table and error handling in main.py, the shared option vocabulary in
options.py. Library code never imports from here."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
