"""Import Intel's OSNet-AIN weights (Open Model Zoo person-reidentification-retail-02xx) into `OSNetAIN`.

The ONNX file 0267 (OSNet-AIN x0.5, exported by PyTorch 1.3) keeps torchreid-style initializer names
(`conv2.0.conv2a.conv1.weight`, `fc.1.running_var`, ...) that are exactly the module names of `OSNetAIN`, so the
import is a strict name-for-name load: every tensor of the backbone must be in the file with the same shape, and
the file may hold only those plus Intel's 1041-class training classifier (`classifier.weight`, stored transposed
as (256, 1041): MSMT17 has 1,041 training identities), which an embedding model does not use and which is left
out. The 0267 file ships inside the package (`reidkit/models/weights/`, Apache-2.0, README there), so
`build_backbone("osnet_ain_x0_5", pretrained=True)` works offline; so does 0277's IR (OSNet-AIN x1.0, 4.8 MB):
`build_backbone("osnet_ain_x1_0", pretrained=True)`.

Intel's OpenVINO IRs (0277 and any copy of them) import (`read_openvino_state`), through
`openvino.Core().read_model`: only unfused tensors keep their torchreid names there (`conv1.conv.weight`, the lite
convs' 1x1 `conv1.weight`, `gate.fc1/fc2`, `fc.0.weight`); the Model Optimizer folded every BatchNorm into the conv
before it (weight `Multiply_18586`, bias `Constant_18034`) and left the GroupNorm gates' parameters anonymous, so
the reader walks the graph from those named anchors (stream convs -> their depthwise conv; the block's conv1 feeds
the first stream; conv3 takes the sum of the gated streams; the downsample is the other conv on the block input)
and gives each folded BatchNorm the identity with the folded bias (exact in eval mode; `OSNetAIN` re-estimates
the statistics on the first training batch, see `OSNetAIN.recalibrate_batchnorm`).
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
from ...utils import openvino_core
from .pretrained import load_checked

# Backbone name -> the vendored files in reidkit/models/weights/ with their sha256 (the first is the one loaded; an
# OpenVINO IR needs its .bin beside the .xml).
VENDORED = {
    "osnet_ain_x0_5": (("person-reidentification-retail-0267.onnx",
                        "ca531dc7b2f0efabc6d26b128dbf6a5e9c7b634339acdb36d11476f999f2c186"),),
    "osnet_ain_x1_0": (("person-reidentification-retail-0277.xml",
                        "82039b1bb986231c50345550e59def94e63579998e9cddbd1a312f293eb87729"),
                       ("person-reidentification-retail-0277.bin",
                        "6bb69e09d07733cc3896b29081d2627f92db7b9aacd50f1a8c3df491cb10f1b7")),
}
# Initializers every OSNet-AIN graph of Intel's holds (their presence is the "is this OSNet-AIN?" check).
SIGNATURE = ("in_first.weight", "conv1.conv.weight", "conv1.bn.weight", "conv2.1.gate.gn.weight",
             "conv5.conv.weight", "global_avgpool.weight", "fc.0.weight", "fc.2.weight")
UNUSED = ("classifier.",)  # Intel's training classifier: not part of the embedding
_WIDTH_BY_STEM = {64: "osnet_ain_x1_0", 32: "osnet_ain_x0_5"}


def weights_folder() -> Path:
    return Path(str(resources.files("reidkit.models"))) / "weights"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vendored_weights(backbone: str) -> Path:
    """The packaged Intel file for `backbone`, checked (with its companions) against its sha256; ModelError if
    absent or altered."""
    if backbone not in VENDORED:
        raise ModelError(f"{backbone}: no weights ship with reidkit at this width (only {', '.join(VENDORED)}: "
                         "Intel's OSNet-AIN models); pass pretrained=<path to an Intel OSNet-AIN .onnx/.xml> or "
                         "build it with pretrained=False")
    paths = []
    for name, expected in VENDORED[backbone]:
        path = weights_folder() / name
        if not path.is_file():
            raise ModelError(f"{backbone}: packaged weights {path} not found (the reidkit installation is "
                             "incomplete; reinstall reidkit)")
        if sha256(path) != expected:
            raise ModelError(f"{backbone}: packaged weights {path} are altered (sha256 differs from {expected}); "
                             "reinstall reidkit")
        paths.append(path)
    return paths[0]


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
        raise ModelError(f"OSNet-AIN weights {path}: expected Intel's ONNX file (.onnx) or OpenVINO IR (.xml)")
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
    """Strictly load an Intel OSNet-AIN file (ONNX, or OpenVINO IR .xml) into `net`; records the source in
    `net.weights_source`. An IR's BatchNorms come folded: see `read_openvino_state`."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        arrays, gate_eps = read_openvino_state(path)
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        stem = int(state["conv1.conv.weight"].shape[0])
        actual = _WIDTH_BY_STEM.get(stem)
        if actual is not None and actual != backbone:
            raise ModelError(f"OSNet-AIN weights {path}: the graph is {actual} (conv1 has {stem} channels); "
                             f"build backbone {actual!r} instead of {backbone!r}")
        for module in net.modules():
            if isinstance(module, nn.GroupNorm):
                module.eps = gate_eps
        kind = "OpenVINO IR, BatchNorm folded"
    else:
        state, kind = intel_state_dict(path, backbone), "ONNX"
    load_checked(net, state, strict=True, where=f"OSNet-AIN weights {path} (for {backbone})")
    net.weights_source = f"Intel {path.stem} (OSNet-AIN, Apache-2.0), imported from {kind}"


# ------------------------------------------------------------------------------------------ OpenVINO IRs

_BN_EPS = 1e-5  # PyTorch's BatchNorm eps, which the identity BatchNorms of a folded import must cancel


class _IRGraph:
    """Navigation over an OpenVINO model: constants by their torchreid name, producers and consumers of a node."""

    def __init__(self, path: Path):
        try:
            import openvino  # noqa: F401  (imported here to name the missing package; the Core is shared)
        except ImportError as exc:
            raise ModelError(f"OSNet-AIN weights {path}: reading OpenVINO IRs needs the package 'openvino' "
                             f"({exc})") from None
        try:
            self.model = openvino_core().read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with C++ messages
            raise ModelError(f"OSNet-AIN weights {path}: OpenVINO cannot read it ({exc})") from None
        self.path = path
        self.named = {op.get_friendly_name().removesuffix("_compressed"): op for op in self.model.get_ordered_ops()
                      if op.get_type_name() == "Constant"}

    def fail(self, what: str) -> ModelError:
        return ModelError(f"OSNet-AIN weights {self.path}: not the layout of Intel's OSNet-AIN IRs ({what})")

    @staticmethod
    def producer(node, index: int = 0):
        return node.input_value(index).get_node()

    @staticmethod
    def consumers(node) -> list:
        return [t.get_node() for t in node.output(0).get_target_inputs()]

    def next(self, node):
        """The one consumer of `node` that carries data (shape queries left aside)."""
        users = [n for n in self.consumers(node) if n.get_type_name() != "ShapeOf"]
        if len(users) != 1:
            raise self.fail(f"{node.get_friendly_name()} feeds {len(users)} ops, expected one")
        return users[0]

    def only(self, nodes: list, kind: str, where: str):
        found = [n for n in nodes if n.get_type_name() == kind]
        if len(found) != 1:
            raise self.fail(f"expected one {kind} after {where}, found {len(found)}")
        return found[0]

    def const(self, node) -> np.ndarray:
        while node.get_type_name() == "Convert":  # FP16 weights are decompressed by a Convert
            node = self.producer(node)
        if node.get_type_name() != "Constant":
            raise self.fail(f"{node.get_friendly_name()} is a {node.get_type_name()}, expected a constant")
        return np.asarray(node.get_data(), dtype=np.float32)

    def operand(self, node, where: str) -> np.ndarray:
        """The constant input of a binary op (Add / Multiply / PRelu)."""
        for i in range(node.get_input_size()):
            src = self.producer(node, i)
            if src.get_type_name() in ("Constant", "Convert"):
                return self.const(src)
        raise self.fail(f"no constant input at {where}")

    def users_of(self, name: str) -> list:
        """The ops taking the named constant (through its Convert)."""
        if name not in self.named:
            raise self.fail(f"no constant named {name!r}")
        nodes, users = [self.named[name]], []
        while nodes:
            node = nodes.pop()
            for user in self.consumers(node):
                (nodes if user.get_type_name() == "Convert" else users).append(user)
        return users

    def fused(self, conv) -> tuple[np.ndarray, np.ndarray, object]:
        """(weight with the BatchNorm folded in, folded bias, the bias Add) of a conv."""
        add = self.only(self.consumers(conv), "Add", conv.get_friendly_name())
        return self.const(self.producer(conv, 1)), self.operand(add, add.get_friendly_name()).ravel(), add


def _identity_bn(state: dict, prefix: str, bias: np.ndarray) -> None:
    """A BatchNorm that, in eval mode, only adds the folded bias: scale 1, mean 0, var 1 - eps."""
    n = bias.size
    state.update({f"{prefix}.weight": np.ones(n, np.float32), f"{prefix}.bias": bias,
                  f"{prefix}.running_mean": np.zeros(n, np.float32),
                  f"{prefix}.running_var": np.full(n, 1.0 - _BN_EPS, np.float32),
                  f"{prefix}.num_batches_tracked": np.zeros((), np.int64)})


def _read_block(g: _IRGraph, state: dict, block: str, gate: str) -> object:
    """One OSBlock's tensors into `state`; returns the block's output node (the ReLU after the residual add)."""
    streams = {"conv2a": 1, "conv2b": 2, "conv2c": 3, "conv2d": 4}
    first_relu = None
    for stream, depth in streams.items():
        for i in range(depth):
            prefix = f"{block}.{stream}" + (f".{i}" if depth > 1 else "")
            conv = g.only(g.users_of(f"{prefix}.conv1.weight"), "Convolution", f"{prefix}.conv1.weight")
            state[f"{prefix}.conv1.weight"] = g.const(g.producer(conv, 1))
            dw = g.only(g.consumers(conv), "GroupConvolution", prefix)
            weight, bias, add = g.fused(dw)
            state[f"{prefix}.conv2.weight"] = weight.reshape(weight.shape[0], 1, *weight.shape[-2:])
            _identity_bn(state, f"{prefix}.bn", bias)
            if stream == "conv2a":
                first_relu = g.only(g.consumers(add), "Relu", prefix)
    # conv1 of the block: the fused conv feeding the first stream
    anchor = g.only(g.users_of(f"{block}.conv2a.conv1.weight"), "Convolution", block)
    conv1 = g.producer(g.producer(g.producer(anchor)))  # Relu <- bias Add <- fused conv
    state[f"{block}.conv1.conv.weight"], bias, _ = g.fused(conv1)
    _identity_bn(state, f"{block}.conv1.bn", bias)
    block_input = g.producer(conv1)
    # gate
    if gate == "fc":
        for fc in ("fc1", "fc2"):
            conv = g.users_of(f"{block}.gate.{fc}.weight")[0]  # one gate shared by the four streams
            state[f"{block}.gate.{fc}.weight"] = g.const(g.producer(conv, 1))
            add = g.only(g.consumers(conv), "Add", f"{block}.gate.{fc}")
            state[f"{block}.gate.{fc}.bias"] = g.operand(add, f"{block}.gate.{fc}").ravel()
    else:
        node = g.only(g.consumers(first_relu), "ReduceMean", f"{block} gate")
        while node.get_type_name() != "MVN":
            node = g.next(node)
        attrs = node.get_attributes()
        if attrs.get("eps_mode", "INSIDE_SQRT").upper() != "INSIDE_SQRT":
            raise g.fail(f"{block} gate: MVN epsilon outside the square root (GroupNorm puts it inside)")
        state[f"_eps.{block}"] = np.float32(attrs["eps"])
        mul = g.only(g.consumers(g.consumers(node)[0]), "Multiply", f"{block} gate")
        add = g.only(g.consumers(mul), "Add", f"{block} gate")
        state[f"{block}.gate.gn.weight"] = g.operand(mul, f"{block} gate").ravel()
        state[f"{block}.gate.gn.bias"] = g.operand(add, f"{block} gate").ravel()
    # conv3: follow the sum of the gated streams to the conv after it
    node = g.only(g.consumers(first_relu), "Multiply", f"{block} gate")
    while node.get_type_name() != "Convolution":
        node = g.next(node)
    state[f"{block}.conv3.conv.weight"], bias, add3 = g.fused(node)
    _identity_bn(state, f"{block}.conv3.bn", bias)
    others = [c for c in g.consumers(block_input)
              if c.get_type_name() == "Convolution" and c.get_friendly_name() != conv1.get_friendly_name()]
    if others:
        state[f"{block}.downsample.conv.weight"], bias, _ = g.fused(others[0])
        _identity_bn(state, f"{block}.downsample.bn", bias)
    residual = g.only(g.consumers(add3), "Add", f"{block} residual")
    return g.only(g.consumers(residual), "Relu", f"{block} residual")


def read_openvino_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], float]:
    """An Intel OSNet-AIN IR as an `OSNetAIN` state dict (BatchNorms as identity + folded bias) and the
    GroupNorm gates' epsilon; ModelError naming the file if it is missing or not such a graph."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"OSNet-AIN weights {path}: file not found")
    g = _IRGraph(path)
    state: dict[str, np.ndarray] = {}
    conv1 = g.only(g.users_of("conv1.conv.weight"), "Convolution", "conv1.conv.weight")
    state["conv1.conv.weight"] = g.const(g.producer(conv1, 1))
    in_add = g.producer(conv1)
    state["in_first.bias"] = g.operand(in_add, "in_first").ravel()
    state["in_first.weight"] = g.operand(g.producer(in_add), "in_first").ravel()
    mvn = g.only(g.consumers(conv1), "MVN", "conv1")
    mul = g.only(g.consumers(mvn), "Multiply", "conv1")
    add = g.only(g.consumers(mul), "Add", "conv1")
    state["conv1.bn.weight"], state["conv1.bn.bias"] = g.operand(mul, "conv1").ravel(), g.operand(add, "c").ravel()
    out = None
    for stage in (2, 3, 4):
        _read_block(g, state, f"conv{stage}.0", "fc")
        out = _read_block(g, state, f"conv{stage}.1", "gn")
        if stage < 4:
            conv = g.only(g.consumers(out), "Convolution", f"conv{stage} transition")
            state[f"conv{stage}.2.0.conv.weight"], bias, _ = g.fused(conv)
            _identity_bn(state, f"conv{stage}.2.0.bn", bias)
    conv5 = g.only(g.consumers(out), "Convolution", "conv5")
    state["conv5.conv.weight"], bias, add = g.fused(conv5)
    _identity_bn(state, "conv5.bn", bias)
    gdc = g.only(g.consumers(g.only(g.consumers(add), "Relu", "conv5")), "GroupConvolution", "conv5")
    weight, bias, _ = g.fused(gdc)
    state["global_avgpool.weight"] = weight.reshape(weight.shape[0], 1, *weight.shape[-2:])
    state["global_avgpool.bias"] = bias
    matmul = g.only(g.users_of("fc.0.weight"), "MatMul", "fc.0.weight")
    state["fc.0.weight"] = g.const(g.producer(matmul, 1))
    node = g.only(g.consumers(matmul), "Add", "fc.0")
    state["fc.0.bias"] = g.operand(node, "fc.0").ravel()
    while node.get_type_name() != "Multiply":
        node = g.next(node)
    scale = g.operand(node, "fc.1").ravel()
    node = g.only(g.consumers(node), "Add", "fc.1")
    _identity_bn(state, "fc.1", g.operand(node, "fc.1").ravel())
    state["fc.1.weight"] = scale
    prelu = g.only(g.consumers(node), "PRelu", "fc.2")
    state["fc.2.weight"] = g.operand(prelu, "fc.2").ravel()
    eps = {float(v) for k, v in state.items() if k.startswith("_eps.")}
    if len(eps) != 1:
        raise g.fail(f"GroupNorm gates with different epsilons {sorted(eps)}")
    return {k: v for k, v in state.items() if not k.startswith("_eps.")}, eps.pop()
