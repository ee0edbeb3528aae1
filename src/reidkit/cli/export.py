"""`reidkit export`: the argparse definition and its handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMAT_CHOICES = ("onnx", "openvino")  # export.onnx.FORMATS (kept literal: building the parser must not import torch)


def export_command(args: argparse.Namespace) -> None:
    from ..export.onnx import export_model, report_dict

    report = export_model(args.checkpoint, fmt=args.format, out=args.out, opset=args.opset,
                          verify_images=args.verify_images, num_verify=args.num_verify, tolerance=args.tolerance)
    print(json.dumps(report_dict(report), indent=2) if args.json else report.summary())


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch) or OpenVINO IR, verified "
                                      "against PyTorch")
    p.add_argument("--checkpoint", type=Path, required=True, help="reidkit checkpoint (.pt)")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="onnx")
    p.add_argument("--out", type=Path, help="output file (default: the checkpoint's name with .onnx / .xml); "
                                            "a preprocessing sidecar <out-stem>.json is written beside it")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--verify-images", type=Path,
                   help="folder of images to compare PyTorch and the export on (default: random-noise images)")
    p.add_argument("--num-verify", type=int, default=32, help="number of verification images")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed abs difference of embeddings")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=export_command)
