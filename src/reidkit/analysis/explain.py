"""Why do two crops match? A picture of the image regions behind a similarity.

Embedding models (as in "Re-ID done right", Zheng et al., fig. 8): the cosine similarity of the L2-normalised
embeddings u_a . u_b is a sum over dimensions of u_a[d] * u_b[d]; the 5 dimensions with the largest products
carry most of the match. Each one is shown on both images as a Grad-CAM map (Selvaraju et al. 2017) of that
dimension: the backbone's feature map weighted by the spatially averaged gradient of the dimension's (BNNeck)
value, ReLU. Pair networks: a Grad-CAM map of the same-person log-odds (averaged over both input orders) on each
view's trunk feature map. Maps are scaled to [0, 1] jointly over the two images, so a weaker image looks weaker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import model_from_checkpoint
from ..data.images import ImageLike, load_image_tensor
from ..errors import ModelError
from ..utils import atomic_path, resolve_device
from .calibration import Calibrator, is_checkpoint, load_calibration

TOP_DIMENSIONS = 5


@dataclass
class ExplainResult:
    """kind: "embedding" or "pair"; score: cosine or log-odds; dimensions/contributions: the top embedding
    dimensions and their products u_a[d] * u_b[d] (empty for pair networks); maps_a/maps_b: (k, H, W) heat maps
    in [0, 1] at the model's input size (k = 5 dimensions, or 1 for a pair network)."""

    kind: str
    score: float
    probability: float | None
    dimensions: list[int]
    contributions: list[float]
    maps_a: np.ndarray
    maps_b: np.ndarray
    images: np.ndarray  # (2, H, W, 3) uint8: the crops as the model saw them
    picture: Path | None = None
    notes: list[str] = field(default_factory=list)


def top_dimensions(features_a: np.ndarray, features_b: np.ndarray, k: int = TOP_DIMENSIONS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, products) of the k largest per-dimension products of the L2-normalised features, largest first."""
    ua = features_a / max(float(np.linalg.norm(features_a)), 1e-12)
    ub = features_b / max(float(np.linalg.norm(features_b)), 1e-12)
    products = ua * ub
    order = np.argsort(-products, kind="stable")[:k]
    return order, products[order]


def _grad_cam(feature_map: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) activations and gradients -> (N, h, w) ReLU(sum_c mean(grad_c) * A_c)."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * feature_map).sum(dim=1))


def _upsampled(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear; scaled by the joint maximum of each pair of rows (image a, image b)."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return up.detach().numpy()


def _joint_scale(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = np.maximum(a.reshape(len(a), -1).max(1), b.reshape(len(b), -1).max(1))[:, None, None]
    top = np.where(top > 0, top, 1.0)
    return a / top, b / top


def _explain_embedding(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device, k: int
                       ) -> tuple[float, list[int], list[float], np.ndarray, np.ndarray]:
    mean = torch.tensor(model.input_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.input_std, device=device).view(1, 3, 1, 1)
    x = (pixels.to(device).float() / 255.0 - mean) / std
    with torch.no_grad():
        feature_map = model.backbone(x)
    feature_map = feature_map.detach().requires_grad_(True)
    _, bn = model.embed(feature_map)  # (2, D) BNNeck features; eval mode: BN uses running statistics
    feats = bn.detach().cpu().numpy().astype(np.float64)
    dims, products = top_dimensions(feats[0], feats[1], k)
    score = float(np.dot(feats[0], feats[1]) / (np.linalg.norm(feats[0]) * np.linalg.norm(feats[1])))
    maps = []
    for d in dims:  # each image's value of dimension d depends only on its own map: one backward for both
        (grad,) = torch.autograd.grad(bn[:, int(d)].sum(), feature_map, retain_graph=True)
        maps.append(_grad_cam(feature_map.detach(), grad))
    cams = _upsampled(torch.stack(maps, 1).flatten(0, 1).cpu(), tuple(pixels.shape[2:]))
    cams = cams.reshape(2, len(dims), *cams.shape[1:])
    return score, [int(d) for d in dims], [float(p) for p in products], cams[0], cams[1]


def _explain_pair(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    x = model.prepare(pixels)
    with torch.no_grad():
        trunk = model.embed(x)
    f = trunk.detach().requires_grad_(True)
    logits = (model.pair_logits(f[:1], f[1:]) + model.pair_logits(f[1:], f[:1])) / 2  # both input orders
    log_odds = logits[0, 1] - logits[0, 0]
    (grad,) = torch.autograd.grad(log_odds, f)
    cams = _upsampled(_grad_cam(f.detach(), grad).cpu(), tuple(pixels.shape[2:]))
    return float(log_odds.detach()), cams[:1], cams[1:]


def explain(a: ImageLike, b: ImageLike, model: str | os.PathLike, out: str | os.PathLike | None = None,
            device: str = "auto", k: int = TOP_DIMENSIONS) -> ExplainResult:
    """Heat maps of why `a` and `b` match (or not) under `model` (a PyTorch checkpoint: the maps need
    gradients); with `out`, the picture is written there (PNG)."""
    if not is_checkpoint(model):
        raise ModelError(f"{model}: explain needs a reidkit PyTorch checkpoint (.pt); exported ONNX / OpenVINO "
                         "models have no gradients")
    torch_device = resolve_device(device)
    net, payload = model_from_checkpoint(model, map_location=torch_device)
    net.to(torch_device).eval()
    resize = payload.get("config", {}).get("data", {}).get("resize", "stretch")
    pixels = load_image_tensor([a, b], tuple(net.input_size), resize)
    record = load_calibration(model, payload)
    calibrator = Calibrator.from_dict(record["calibrator"]) if record else None
    if hasattr(net, "pair_logits"):
        for module in net.modules():  # the fused C kernels have a backward, but the PyTorch path is the reference
            if hasattr(module, "native"):
                module.native = False
        score, maps_a, maps_b = _explain_pair(net, pixels)
        kind, dims, products = "pair", [], []
        probability = float(calibrator.predict(score)) if calibrator else float(1 / (1 + np.exp(-score)))
    else:
        score, dims, products, maps_a, maps_b = _explain_embedding(net, pixels, torch_device, k)
        kind = "embedding"
        probability = float(calibrator.predict(score)) if calibrator else None
    maps_a, maps_b = _joint_scale(maps_a, maps_b)
    images = pixels.permute(0, 2, 3, 1).numpy()
    result = ExplainResult(kind, score, probability, dims, products, maps_a, maps_b, images)
    if record is None:
        result.notes.append("not calibrated: " + ("no probability for an embedding model" if kind == "embedding"
                                                  else "probability = the network's uncalibrated softmax"))
    if out is not None:
        result.picture = draw_explanation(result, out, title=Path(model).stem)
    return result


def draw_explanation(result: ExplainResult, path: str | os.PathLike, title: str = "") -> Path:
    """Both crops (rows) with their heat maps (columns: the crop, then one overlay per dimension / the pair map)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 1 + len(result.maps_a)
    figure = Figure(figsize=(1.35 * columns + 0.2, 5.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, columns, squeeze=False)
    for row, (image, maps) in enumerate(((result.images[0], result.maps_a), (result.images[1], result.maps_b))):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("A" if row == 0 else "B", fontsize=8)
        for col, heat in enumerate(maps, start=1):
            axes[row, col].imshow(image)
            axes[row, col].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if row == 0:
                label = (f"dim {result.dimensions[col - 1]}\n+{result.contributions[col - 1]:.3f}"
                         if result.kind == "embedding" else "Grad-CAM\nsame-person logit")
                axes[row, col].set_title(label, fontsize=7)
    for axis in axes.ravel():
        axis.set_axis_off()
    what = "cosine" if result.kind == "embedding" else "log-odds"
    probability = "uncalibrated" if result.probability is None else f"P(same) {result.probability:.3f}"
    share = (f", top-{len(result.dimensions)} share {sum(result.contributions) / result.score:.0%}"
             if result.kind == "embedding" and result.score > 0 else "")
    figure.suptitle(f"{title}\n{what} {result.score:.3f}, {probability}{share}", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
