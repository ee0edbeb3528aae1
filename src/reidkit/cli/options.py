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

Help texts show defaults (`HelpFormatter`, the formatter of every `ArgumentParser` here and of its subparsers);
an alias is accepted but not listed in --help. tests/test_cli.py walks every verb and holds them to this table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..errors import ReIDError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (`(default: X)`) unless it has none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        # Identity, not equality: 0 and 0.0 are defaults worth showing although they equal False.
        if "%(default)" in help or any(default is v for v in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings or help is argparse.SUPPRESS:
            return help
        return f"{help} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose help shows defaults; its subparsers (at any depth) are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


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
        _required_options(parser).append((dest, name, parser))
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = f"{action.help} (required)"
    return action


def _required_options(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    required = parser.get_default("_required_options")
    if required is None:
        required = []
        parser.set_defaults(_required_options=required)
    return required


def check_required(args: argparse.Namespace) -> None:
    """Fail like argparse does (usage of the verb, exit 2) when an option added with `required=True` is missing
    under its name and every alias. cli/main.py calls it after parsing, for every verb."""
    required = getattr(args, "_required_options", None) or []
    missing = [(name, parser) for dest, name, parser in required if getattr(args, dest, None) is None]
    if missing:
        missing[0][1].error(f"the following arguments are required: {', '.join(name for name, _ in missing)}")


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


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value}: must be >= {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse then exits 2 naming the option)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0")
    return value


def add_batch_size(parser: argparse.ArgumentParser, default: int = 64) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=default, help="images per forward pass")


def add_flip(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flip", action="store_true",
                        help="flip test-time augmentation: average the embeddings of each image and its mirror")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_top(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    add_option(parser, "--top", aliases=("--max-rank",), type=int, default=default, metavar="N", help=help)


def add_minutes(parser: argparse.ArgumentParser, help: str = "wall-time cap in minutes (0 = none)",
                default: float | None = None) -> None:
    parser.add_argument("--minutes", type=float, default=default, metavar="M", help=help)


# -------------------------------------------------------------------------------------------- re-ranking

RERANK_CHOICES = ("none", "k_reciprocal", "aqe", "ssm", "pair")  # "none" + reidkit.rerank names (a test checks)
PAIR_TOP_DEFAULT = 20  # pair fusion: candidates re-ordered per query (the validated CUHK03-NP setting)
POOL_DEFAULT = 100  # search: candidates per query handed to k_reciprocal / aqe / ssm
# The parameters of the registered re-rankers: (option, re-ranker, its parameter, type, default, metavar, help).
RERANK_PARAMS = (
    ("--k1", "k_reciprocal", "k1", int, 20, "K1", "size of the k-reciprocal neighbourhood"),
    ("--k2", "k_reciprocal", "k2", int, 6, "K2", "neighbours of the local query expansion"),
    ("--lambda", "k_reciprocal", "lambda_value", float, 0.3, "LAMBDA",
     "weight of the original distance (1 - LAMBDA: Jaccard distance)"),
    ("--aqe-top", "aqe", "top_k", int, 10, "K", "gallery neighbours averaged into each query"),
    ("--aqe-alpha", "aqe", "alpha", float, 3.0, "ALPHA", "neighbour weight = similarity ** ALPHA"),
    ("--ssm-alpha", "ssm", "alpha", float, 0.9, "ALPHA", "diffusion weight in [0, 1)"),
    ("--ssm-neighbours", "ssm", "neighbours", int, 20, "K", "kNN graph neighbours"),
    ("--pair-weight", "pair", "weight", float, 1.0, "W",
     "order by (1 - W) x embedding rank + W x pair rank (1 = pair score only)"),
)


def _dest(option: str) -> str:
    return "lambda_value" if option == "--lambda" else option.lstrip("-").replace("-", "_")


def add_rerank_options(parser: argparse.ArgumentParser) -> None:
    """The re-ranking options of `evaluate` and `search`: the same re-rankers, names and defaults in both.

    Parameter defaults are None in the namespace (so an option given for a re-ranker that does not run is caught
    by `reranker_from_args`); the help shows the re-ranker's default."""
    from pathlib import Path

    group = parser.add_argument_group("re-ranking (reidkit.rerank; docs/reranking.md)")
    group.add_argument("--rerank", choices=RERANK_CHOICES, default="none",
                       help="re-ranker; with --pair-model, k_reciprocal/aqe/ssm are followed by pair fusion")
    for option, method, _, kind, default, metavar, text in RERANK_PARAMS:
        group.add_argument(option, dest=_dest(option), type=kind, metavar=metavar,
                           help=f"{method}: {text} (default: {default})")
    add_option(group, "--pair-model", aliases=("--pair-checkpoint",), type=Path, metavar="FILE",
               help="pair network checkpoint (idla, idla_ncc, mls) for pair fusion; alone it implies --rerank pair")
    add_option(group, "--rerank-top", aliases=("--pair-top-k", "--rerank-k"), type=int, metavar="N",
               help=f"candidates per query the re-ranker re-orders (default: {PAIR_TOP_DEFAULT} for pair fusion; "
                    f"search hands each query's top max(--top, N) to the re-ranker, N = {POOL_DEFAULT} for the "
                    "others; evaluate's k_reciprocal/aqe/ssm use the whole gallery)")
    group.add_argument("--pair-tta", action="store_true",
                       help="pair fusion: average both input orders and the mirrored pair (4 passes)")


def reranker_from_args(args: argparse.Namespace, show_progress: bool = False) -> Any:
    """The `reidkit.rerank` re-ranker the options of `add_rerank_options` ask for (a Chain when a method is
    followed by pair fusion), or None for no re-ranking. An option of a re-ranker that will not run is refused."""
    method, pair_model = args.rerank, getattr(args, "pair_model", None)
    if method == "pair" and pair_model is None:
        raise ReIDError("--rerank pair needs --pair-model (a pair network checkpoint)")
    running = {method} | ({"pair"} if pair_model is not None else set())
    params: dict[str, dict[str, Any]] = {name: {} for name in running}
    for option, name, param, _, default, _, _ in RERANK_PARAMS:
        value = getattr(args, _dest(option))
        if value is not None and name not in running:
            raise ReIDError(f"{option} applies to --rerank {name}" + (" (with --pair-model)" if name == "pair" else "")
                            + f", but the re-ranking is {' + '.join(sorted(running))}")
        if name in running:
            params[name][param] = default if value is None else value
    if args.pair_tta and "pair" not in running:
        raise ReIDError("--pair-tta applies to pair fusion (--pair-model), which is not requested")
    if method == "none" and pair_model is None:
        return None
    from ..rerank import Chain, build_reranker

    steps = [build_reranker(method, **params[method])] if method not in ("none", "pair") else []
    if pair_model is not None:
        steps.append(build_reranker("pair", model=pair_model, top=args.rerank_top or PAIR_TOP_DEFAULT,
                                    tta=args.pair_tta, device=getattr(args, "device", "cpu"),
                                    show_progress=show_progress, **params["pair"]))
    return steps[0] if len(steps) == 1 else Chain(tuple(steps))
