"""`reidkit serve`: the web app (reidkit.web) over a gallery index, a `reidkit track` run and clusters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ReIDError
from .options import add_device, add_model, add_option, add_top, positive_int


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return args.token
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise ReIDError(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ReIDError(f"--token-file {args.token_file}: empty")
    return token


def _index_folder(args: argparse.Namespace) -> Path | None:
    """--index, else the gallery of the --tracks run (one row per tracklet) when it has one."""
    if args.index is not None:
        return args.index
    if args.tracks is not None and (args.tracks / "gallery" / "index.json").is_file():
        return args.tracks / "gallery"
    if args.tracks is None and args.clusters is None:
        raise ReIDError("nothing to serve: give --index DIR, --tracks RUN and/or --clusters DIR")
    return None


def serve_command(args: argparse.Namespace) -> None:
    from ..web.app import WebConfig, serve

    if args.token is not None and args.token_file is not None:
        raise ReIDError("--token and --token-file: give one")
    index = _index_folder(args)
    model = args.model
    if model is None and index is not None:
        from ..search.index import GalleryIndex
        from .search import _recorded_model

        loaded = GalleryIndex.load(index, with_features=False)
        model = _recorded_model(loaded) if loaded.extractor_info.get("path") else None
    if args.max_upload_mb <= 0:
        raise ReIDError(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
    config = WebConfig(index=index, tracks=args.tracks, clusters=args.clusters, model=model, token=_token(args),
                       max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_pixels=args.max_pixels,
                       top_k=args.top, device=args.device)
    serve(config, args.host, args.port, announce=lambda line: print(line, flush=True, file=sys.stdout))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, help="gallery index folder to search (default: the --tracks run's "
                                                   "gallery, if it has one)")
    parser.add_argument("--tracks", type=Path, metavar="RUN", help="a `reidkit track` output folder: identities, "
                                                                   "timelines and crops")
    parser.add_argument("--clusters", type=Path, metavar="DIR", help="a `reidkit cluster` output folder "
                                                                     "(clusters.csv) to browse")
    add_model(parser, required=False, help="model that embeds query crops and verifies pairs (default: the model "
                                           "that built the index, if its SHA-256 still matches)")
    add_device(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback requires --token or --token-file")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token", help="secret every request must carry (Authorization: Bearer T or ?token=T); "
                                       "prefer --token-file, a command line is visible to other users")
    group.add_argument("--token-file", type=Path, metavar="FILE", help="file holding the token")
    add_option(parser, "--max-upload-mb", type=float, default=8.0, metavar="MB",
               help="largest accepted upload per crop, in MiB (413 above)")
    parser.add_argument("--max-pixels", type=positive_int, default=25_000_000, metavar="N",
                        help="largest accepted image area in pixels (400 above: a possible decompression bomb)")
    add_top(parser, 10, "hits per search unless the request asks for another number (top_k, at most 100)")
    parser.set_defaults(func=serve_command)
