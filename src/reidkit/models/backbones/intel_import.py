"""Import Intel's OSNet-AIN weights (Open Model Zoo person-reidentification-retail-02xx) into `OSNetAIN`.

The ONNX file 0267 (OSNet-AIN x0.5, exported by PyTorch 1.3) keeps torchreid-style initializer names
(`conv2.0.conv2a.conv1.weight`, `fc.1.running_var`, ...) that are exactly the module names of `OSNetAIN`, so the
import is a strict name-for-name load: every tensor of the backbone must be in the file with the same shape, and
the file may hold only those plus Intel's 1041-class training classifier (`classifier.weight`, stored transposed
as (256, 1041): MSMT17 has 1,041 training identities), which an embedding model does not use and which is left
out. The 0267 file ships inside the package (`reidkit/models/weights/`, Apache-2.0, README there), so
`build_backbone("osnet_ain_x0_5", pretrained=True)` works offline.

The OpenVINO IRs (0277 x1.0, 0288 x0.25) are readable too (`openvino.Core().read_model` exposes every constant),
but the converter folded each BatchNorm into the conv before it and stored FP16 weights under generated names
(`Multiply_18586_compressed`): see docs/models.md for why they are not imported.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...errors import ModelError
from .pretrained import load_checked

# Backbone name -> (vendored file in reidkit/models/weights/, its sha256).
VENDORED = {
    "osnet_ain_x0_5": ("person-reidentification-retail-0267.onnx",
                       "ca531dc7b2f0efabc6d26b128dbf6a5e9c7b634339acdb36d11476f999f2c186"),
}
# Initializers every OSNet-AIN graph of Intel's holds (their presence is the "is this OSNet-AIN?" check).
SIGNATURE = ("in_first.weight", "conv1.conv.weight", "conv1.bn.weight", "conv2.1.gate.gn.weight",
             "conv5.conv.weight", "global_avgpool.weight", "fc.0.weight", "fc.2.weight")
UNUSED = ("classifier.",)  # Intel's training classifier: not part of the embedding
_WIDTH_BY_STEM = {64: "osnet_ain_x1_0", 32: "osnet_ain_x0_5", 16: "osnet_ain_x0_25"}


def weights_folder() -> Path:
    return Path(str(resources.files("reidkit.models"))) / "weights"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vendored_weights(backbone: str) -> Path:
    """The packaged Intel file for `backbone`, checked against its sha256; ModelError if absent or altered."""
    if backbone not in VENDORED:
        hint = {"osnet_ain_x1_0": "person-reidentification-retail-0277", "osnet_ain_x0_25":
                "person-reidentification-retail-0288"}.get(backbone, "an Intel OSNet-AIN model")
        raise ModelError(f"{backbone}: no weights ship with reidkit at this width (only osnet_ain_x0_5: Intel "
                         f"person-reidentification-retail-0267); Intel's file for it is {hint} (OpenVINO IR, "
                         "not importable: docs/models.md), so build it with pretrained=False")
    name, expected = VENDORED[backbone]
    path = weights_folder() / name
    if not path.is_file():
        raise ModelError(f"{backbone}: packaged weights {path} not found (the reidkit installation is incomplete; "
                         "reinstall reidkit)")
    if sha256(path) != expected:
        raise ModelError(f"{backbone}: packaged weights {path} are altered (sha256 differs from {expected}); "
                         "reinstall reidkit")
    return path


def read_onnx_initializers(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file by name; ModelError naming the file if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"OSNet-AIN weights {path}: file not found")
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ModelError(f"OSNet-AIN weights {path}: reading ONNX files needs the package 'onnx' ({exc}); "
                         "pip install onnx") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for corrupt or non-ONNX files
        raise ModelError(f"OSNet-AIN weights {path}: not a readable ONNX file ({exc.__class__.__name__})") from None
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def intel_state_dict(path: str | os.PathLike, backbone: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of an Intel OSNet-AIN ONNX file, torchreid names kept; ModelError if it is not one."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"OSNet-AIN weights {path}: expected Intel's ONNX file (person-reidentification-retail-"
                         "0267.onnx); OpenVINO IRs fold BatchNorm into the convs and are not importable "
                         "(docs/models.md)")
    arrays = read_onnx_initializers(path)
    absent = [k for k in SIGNATURE if k not in arrays]
    if absent:
        shown = ", ".join(list(arrays)[:5]) or "none"
        raise ModelError(f"OSNet-AIN weights {path}: not an Intel OSNet-AIN graph (expected torchreid-style "
                         f"initializers {', '.join(SIGNATURE)}; missing {', '.join(absent)}; the file has "
                         f"{len(arrays)} initializers: {shown}{' ...' if len(arrays) > 5 else ''})")
    stem = int(arrays["conv1.conv.weight"].shape[0])
    actual = _WIDTH_BY_STEM.get(stem)
    if actual is not None and actual != backbone:
        raise ModelError(f"OSNet-AIN weights {path}: the graph is {actual} (conv1 has {stem} channels); "
                         f"build backbone {actual!r} instead of {backbone!r}")
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items() if not k.startswith(UNUSED)}


def load_intel_weights(net: nn.Module, path: str | os.PathLike, backbone: str) -> None:
    """Strictly load an Intel OSNet-AIN file into `net`; records the source in `net.weights_source`."""
    state = intel_state_dict(path, backbone)
    load_checked(net, state, strict=True, where=f"OSNet-AIN weights {path} (for {backbone})")
    net.weights_source = f"Intel {Path(path).stem} (OSNet-AIN, Apache-2.0), imported from ONNX"
