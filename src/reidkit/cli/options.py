"""One vocabulary for every verb: each concept has one option name, added here, so verbs cannot drift apart.

| concept                              | option          | old spellings kept as hidden aliases (one release) |
| ------------------------------------ | --------------- | -------------------------------------------------- |
| model file (.pt / .onnx / .xml)      | --model         | --checkpoint                                       |
| pair network for re-ranking          | --pair-model    | --pair-checkpoint                                  |
| input dataset / image folder         | --data          | --images                                           |
| how many ranked results              | --top           | --max-rank                                         |
| candidates a re-ranker re-orders     | --rerank-top    | --pair-top-k, --rerank-k                           |
| approximate nearest-neighbour kind   | --approx        | --method                                           |
| wall-time cap                        | --minutes       | (config key max_minutes)                           |
| torch device / batch / flip / quiet  | --device, --batch-size, --flip, --quiet                              |

Help texts show defaults (`HelpFormatter`); an alias is accepted but not listed in --help.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (`(default: X)`) unless it has none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        if "%(default)" in help or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)"


def add_option(parser: argparse.ArgumentParser, name: str, *,
               aliases: Sequence[str] = (), required: bool = False, **kwargs: Any) -> argparse.Action:
    """`name` with its help shown; each alias sets the same destination without appearing in --help.

    `required=True` is checked after parsing (`check_required`) so that an alias satisfies it too."""
    dest = kwargs.pop("dest", name.lstrip("-").replace("-", "_"))
    action = parser.add_argument(name, dest=dest, **kwargs)
    alias_kwargs = {k: v for k, v in kwargs.items() if k not in ("help", "default", "metavar")}
    for alias in aliases:
        parser.add_argument(alias, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **alias_kwargs)
    if required:
        _required_options(parser).append((dest, name))
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = f"{action.help} (required)"
    return action


def _required_options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    required = parser.get_default("_required_options")
    if required is None:
        required = []
        parser.set_defaults(_required_options=required)
    return required


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail like argparse does when an option added with `required=True` (or any alias of it) is missing."""
    required = getattr(args, "_required_options", None) or []
    missing = [name for dest, name in required if getattr(args, dest, None) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------- shared options

def add_model(parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    from pathlib import Path

    add_option(parser, "--model", aliases=("--checkpoint",), type=Path, required=required, metavar="FILE",
               help=help or "model file: a reidkit checkpoint (.pt), ONNX (.onnx) or OpenVINO IR (.xml)")


def add_data(parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    from pathlib import Path

    add_option(parser, "--data", aliases=("--images",), type=Path, required=required, metavar="PATH",
               help=help or "dataset root (Market layout), image folder or CSV/JSON manifest")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N")


def add_batch_size(parser: argparse.ArgumentParser, default: int = 64) -> None:
    parser.add_argument("--batch-size", type=int, default=default, help="images per forward pass")


def add_flip(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flip", action="store_true",
                        help="flip test-time augmentation: average the embeddings of each image and its mirror")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_top(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    add_option(parser, "--top", aliases=("--max-rank",), type=int, default=default, metavar="N", help=help)


def add_minutes(parser: argparse.ArgumentParser, help: str = "wall-time cap in minutes (0 = none)") -> None:
    parser.add_argument("--minutes", type=float, default=None, metavar="M", help=help)
