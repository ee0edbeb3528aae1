"""`reidkit export`: the argparse definition and its handler."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_batch_size, add_model, add_quiet

FORMAT_CHOICES = ("onnx", "openvino")  # export.onnx.FORMATS (kept literal: building the parser must not import torch)


def export_command(args: argparse.Namespace) -> None:
    from ..export.onnx import export_model, report_dict

    report = export_model(args.model, fmt=args.format, out=args.out, opset=args.opset,
                          verify_images=args.verify_images, num_verify=args.num_verify, tolerance=args.tolerance,
                          batch_size=args.batch_size)
    sys.stdout.write((json.dumps(report_dict(report), indent=2) if args.json else report.summary()) + "\n")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    help = ("export a checkpoint to ONNX (dynamic batch) or OpenVINO IR, verified against PyTorch "
            "(needs the [deploy] extra: pip install 'reidkit[deploy]')")
    p = sub.add_parser("export", help=help, description=help)
    add_model(p, help="reidkit checkpoint (.pt) to export")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="onnx", help="what to write")
    p.add_argument("--out", type=Path, help="output file (default: the checkpoint's name with .onnx / .xml); "
                                            "a preprocessing sidecar <out-stem>.json is written beside it")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--verify-images", type=Path,
                   help="folder of images to compare PyTorch and the export on (default: random-noise images)")
    p.add_argument("--num-verify", type=int, default=32, help="number of verification images")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed abs difference of embeddings")
    add_batch_size(p, default=16)
    add_quiet(p)
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=export_command)
