"""1:1 verification: is the person in crop A the person in crop B? A calibrated probability, a decision and the
threshold it used, for embedding models (cosine of the L2-normalised embeddings) and pair networks (their
same-person log-odds, averaged over both input orders); and `calibrate`, which fits that probability on
labelled validation pairs and stores it with the model.

>>> r = verify("a.jpg", "b.jpg", model="runs/x/best.pt")            # VerifyResult(probability=0.97, same=True, ...)
>>> r = verify("a.jpg", "b.jpg", model="runs/x/best.pt", far=1e-3)  # threshold at a false accept rate of 0.1 %
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..data import load_dataset
from ..data.images import ImageLike, decode_images, load_image_tensor
from ..data.records import Record, split_arrays
from ..errors import ConfigError, DataError, ModelError
from ..metrics.calibration import STANDARD_FARS, expected_calibration_error, tar_at_far
from ..metrics.verification import plot_roc_det, roc_auc
from ..utils import atomic_write_json, progress, resolve_device
from .calibration import (
    FORMAT,
    Calibrator,
    far_thresholds,
    fit_calibrator,
    is_checkpoint,
    load_calibration,
    store_calibration,
    threshold_for_far,
    validation_pairs,
)

logger = logging.getLogger(__name__)

# Decision thresholds without a calibration (docs/verify_cluster.md). Cosine 0.5: on CUHK03-NP validation pairs
# the recipe embedding's equal-error threshold lies near it (different people mostly score below 0.4). Pair
# networks: log-odds 0, i.e. their softmax P(same) = 0.5.
DEFAULT_THRESHOLDS = {"cosine": 0.5, "pair_log_odds": 0.0}
EMBED_CHUNK = 1024  # images decoded at once when embedding many (bounded memory at 100k crops)


# ------------------------------------------------------------------------------------------------ scorers

class EmbeddingScorer:
    """Cosine similarity of L2-normalised embeddings (any backend of `reidkit.inference`)."""

    kind = "cosine"

    def __init__(self, model: str | os.PathLike, device: str = "auto", flip: bool = False, batch_size: int = 64):
        from ..inference import build_extractor

        self.extractor = build_extractor(model, device=device, flip=flip, batch_size=batch_size)

    def features(self, images: Sequence[ImageLike], show_progress: bool = False) -> np.ndarray:
        return embed_images(self.extractor, images, show_progress)[0]

    def score_pairs(self, images: Sequence[ImageLike], first: np.ndarray, second: np.ndarray,
                    show_progress: bool = False) -> np.ndarray:
        return cosine_pairs(self.features(images, show_progress), first, second)


class PairScorer:
    """A pair network's same-person log-odds, averaged over both input orders (the pair layers are asymmetric)."""

    kind = "pair_log_odds"

    def __init__(self, model: str | os.PathLike, device: str = "auto", flip: bool = False, batch_size: int = 64):
        self.device = resolve_device(device)
        self.model, payload = model_from_checkpoint(model, map_location=self.device, task="pair")
        self.model.to(self.device).eval()
        self.resize = payload.get("config", {}).get("data", {}).get("resize", "stretch")
        self.flip, self.batch_size = flip, batch_size

    def pixels(self, images: Sequence[ImageLike], show_progress: bool = False) -> torch.Tensor:
        return load_image_tensor(list(images), tuple(self.model.input_size), self.resize, show_progress)

    def score_pairs(self, images: Sequence[ImageLike], first: np.ndarray, second: np.ndarray,
                    show_progress: bool = False) -> np.ndarray:
        pixels = self.pixels(images, show_progress)
        scores = self.model.image_pair_scores(pixels, pixels, torch.as_tensor(first), torch.as_tensor(second),
                                              batch_size=256, symmetric=True, flip=self.flip,
                                              show_progress=show_progress)
        return scores.numpy().astype(np.float64)


def model_task(model: str | os.PathLike) -> str:
    """"pair" for a pair-network checkpoint, "embedding" otherwise (exported ONNX / OpenVINO models embed)."""
    if not is_checkpoint(model):
        return "embedding"
    from ..models.registry import model_spec

    return model_spec(load_checkpoint(model)["model_name"]).task


def open_scorer(model: str | os.PathLike, device: str = "auto", flip: bool = False,
                batch_size: int = 64) -> EmbeddingScorer | PairScorer:
    cls = PairScorer if model_task(model) == "pair" else EmbeddingScorer
    return cls(model, device=device, flip=flip, batch_size=batch_size)


def cosine_pairs(features: np.ndarray, first: np.ndarray, second: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """features[first[i]] . features[second[i]] in blocks of pairs (float64)."""
    out = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), block):
        a = features[first[start:start + block]].astype(np.float64)
        out[start:start + block] = np.einsum("ij,ij->i", a, features[second[start:start + block]])
    return out


def embed_images(extractor: Any, images: Sequence[ImageLike], show_progress: bool = False,
                 skip_unreadable: bool = False, desc: str = "embedding"
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(features of the readable images, readable mask, [(path, reason)] unreadable), decoding `EMBED_CHUNK`
    images at a time so memory stays bounded. Unreadable files raise one DataError naming them unless
    `skip_unreadable` (then the caller reports them)."""
    chunks, masks, bad = [], [], []
    bar = progress(total=len(images), desc=desc, enabled=show_progress, unit="img")
    for start in range(0, len(images), EMBED_CHUNK):
        part = list(images[start:start + EMBED_CHUNK])
        pixels, ok, part_bad = decode_images(part, tuple(extractor.input_size), extractor.resize)
        bad += part_bad
        masks.append(ok)
        if len(pixels):
            chunks.append(extractor.embed_uint8(pixels))
        bar.update(len(part))
    bar.close()
    if bad and not skip_unreadable:
        shown = "\n  ".join(reason for _, reason in bad[:20])
        raise DataError(f"{len(bad)} unreadable image(s):\n  {shown}")
    dim = chunks[0].shape[1] if chunks else int(extractor.dim)
    features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return features, np.concatenate(masks) if masks else np.zeros(0, bool), bad


# ------------------------------------------------------------------------------------------------ verify

@dataclass
class VerifyResult:
    """probability: calibrated P(same) (None for an uncalibrated embedding model); same: the decision
    score > threshold; threshold and score are on the model's score scale (`score_kind`)."""

    probability: float | None
    same: bool
    threshold: float
    score: float
    score_kind: str
    calibrated: bool
    far: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _identical(a: ImageLike, b: ImageLike) -> bool:
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        pa, pb = Path(a), Path(b)
        if pa.exists() and pb.exists() and (pa.resolve() == pb.resolve() or pa.read_bytes() == pb.read_bytes()):
            return True
    pixels, _, _ = decode_images([a, b], (128, 64))
    return len(pixels) == 2 and bool(torch.equal(pixels[0], pixels[1]))


def verify(a: ImageLike, b: ImageLike, model: str | os.PathLike, far: float | None = None, device: str = "auto",
           flip: bool | None = None) -> VerifyResult:
    """Probability that crops `a` and `b` (paths, PIL images or HxWx3 arrays) show the same person.

    With a calibration stored by `calibrate`: the calibrated probability, and the decision at P(same) > 0.5 or,
    with `far`, at the threshold measured for that false accept rate. Without one: no probability for embedding
    models (a cosine is not a probability), the uncalibrated softmax for pair networks, and the decision at
    `DEFAULT_THRESHOLDS` (said in `notes`). flip=None uses the calibration's flip setting.
    """
    record = load_calibration(model)
    use_flip = bool(record.get("flip", False)) if flip is None and record else bool(flip)
    scorer = open_scorer(model, device=device, flip=use_flip, batch_size=2)
    load_image_tensor([a, b], (16, 8))  # unreadable inputs fail here, naming the file, before any model work
    score = float(scorer.score_pairs([a, b], np.array([0]), np.array([1]))[0])
    notes = []
    if _identical(a, b):
        notes.append("the two images are identical (same pixels): any model scores them as the same person, "
                     "so the probability is ~1 by construction and says nothing about the model")
    if record is None:
        if far is not None:
            raise ConfigError(f"--far needs a calibrated model: {model} has no calibration (run `reidkit calibrate "
                              f"--model {model} --data VALIDATION_FOLDER`)")
        threshold = DEFAULT_THRESHOLDS[scorer.kind]
        probability = float(1 / (1 + np.exp(-score))) if scorer.kind == "pair_log_odds" else None
        notes.append(f"not calibrated: decision by the default {scorer.kind} threshold {threshold:g}"
                     + (", probability = the network's uncalibrated softmax" if probability is not None else
                        ", no probability (a cosine is not one)") + "; run `reidkit calibrate` to calibrate")
        return VerifyResult(probability, score > threshold, threshold, score, scorer.kind, False, None, notes)
    if record["score"] != scorer.kind:
        raise ModelError(f"{model}: its calibration is for {record['score']} scores, the model gives {scorer.kind}")
    calibrator = Calibrator.from_dict(record["calibrator"])
    threshold = threshold_for_far(record, far) if far is not None else float(record["default_threshold"])
    probability = float(calibrator.predict(score))
    return VerifyResult(probability, score > threshold, threshold, score, scorer.kind, True, far, notes)


# ------------------------------------------------------------------------------------------------ calibrate

@dataclass
class CalibrationResult:
    """The stored record, where it went, and the ROC/DET picture."""

    record: dict[str, Any]
    stored_in: Path | None
    picture: Path
    summary: Path | None = None


def labelled_records(data: str | os.PathLike | Sequence[Record]) -> list[Record]:
    """Records of a validation set: query + gallery of a Market root (the validation identities of a
    `reidkit split` carve), else every image of a folder / manifest."""
    if not isinstance(data, (str, os.PathLike)):
        return list(data)
    dataset = load_dataset(data)
    records = list(dataset.query) + list(dataset.gallery) if dataset.query or dataset.gallery else list(dataset.train)
    distractors = sum(r.pid <= 0 for r in records)
    if distractors:  # Market pid 0 = distractors of unknown (and different) identities: no positive pairs
        logger.warning("%s: %d distractor image(s) (pid 0) left out of the validation pairs", data, distractors)
        records = [r for r in records if r.pid > 0]
    if not records:
        raise DataError(f"{data}: no labelled images")
    return records


def calibrate(model: str | os.PathLike, data: str | os.PathLike | Sequence[Record], method: str = "platt",
              out: str | os.PathLike | None = None, negatives: int = 100_000, seed: int = 0, device: str = "auto",
              flip: bool = False, batch_size: int = 64, store: bool = True, tune_cluster: bool = True,
              show_progress: bool = False) -> CalibrationResult:
    """Fit P(same) on validation pairs of `data`, measure the thresholds at FAR 1e-2/1e-3/1e-4, (embedding models)
    choose the clustering threshold on the same identities, store it all with the model and draw ROC/DET curves.

    The picture and a JSON summary go to `out` (a folder), else next to the model as `<model>_verification.png`.
    """
    records = labelled_records(data)
    paths, pids, camids = split_arrays(records)
    cross_camera = np.unique(camids).size > 1
    fit_pairs, eval_pairs = validation_pairs(pids, camids, seed, negatives, cross_camera)
    scorer = open_scorer(model, device=device, flip=flip, batch_size=batch_size)
    first = np.r_[fit_pairs.first, eval_pairs.first]
    second = np.r_[fit_pairs.second, eval_pairs.second]
    features = None
    if isinstance(scorer, EmbeddingScorer):
        features = scorer.features(paths, show_progress)
        scores = cosine_pairs(features, first, second)
    else:
        scores = scorer.score_pairs(paths, first, second, show_progress)
    fit_scores, eval_scores = scores[:len(fit_pairs)], scores[len(fit_pairs):]
    calibrator = fit_calibrator(fit_scores, fit_pairs.label, method)
    thresholds, far_curve = far_thresholds(eval_scores, eval_pairs.label)
    record = {
        "format": FORMAT, "score": scorer.kind, "calibrator": calibrator.to_dict(), "flip": bool(flip),
        "thresholds": thresholds, "far_curve": far_curve, "default_threshold": calibrator.score_at(0.5),
        "pairs": {"fit_same": int(fit_pairs.label.sum()), "fit_different": int((1 - fit_pairs.label).sum()),
                  "far_same": int(eval_pairs.label.sum()), "far_different": int((1 - eval_pairs.label).sum()),
                  "identities": int(np.unique(pids).size), "images": len(paths), "seed": seed,
                  "cross_camera": bool(cross_camera)},
        "metrics": _calibration_metrics(calibrator, fit_scores, fit_pairs.label, eval_scores, eval_pairs.label),
        "data": str(data) if isinstance(data, (str, os.PathLike)) else f"{len(records)} records",
    }
    if features is not None and tune_cluster:
        from .cluster import choose_cluster_params

        params, table = choose_cluster_params(features, pids, camids if cross_camera else None)
        record["cluster"] = {**asdict(params), "bcubed_f": table[0]["bcubed_f"], "chosen_on": record["data"],
                             "identities": int(np.unique(pids).size)}
    stored = store_calibration(model, record) if store else None
    picture, summary = _outputs(model, out)
    plot_roc_det(eval_scores, eval_pairs.label, picture, title=Path(model).stem,
                 marks={f"FAR {far:g}": thresholds[f"{far:g}"] for far in STANDARD_FARS})
    if summary is not None:
        atomic_write_json(record, summary)
    return CalibrationResult(record, stored, picture, summary)


def _calibration_metrics(calibrator: Calibrator, fit_scores: np.ndarray, fit_labels: np.ndarray,
                         eval_scores: np.ndarray, eval_labels: np.ndarray) -> dict[str, float]:
    metrics = {"auc": roc_auc(eval_scores, eval_labels),
               "ece_fit_pairs": expected_calibration_error(calibrator.predict(fit_scores), fit_labels)}
    for far in STANDARD_FARS:
        metrics[f"tar_at_far_{far:g}"] = tar_at_far(eval_scores, eval_labels, far)[0]
    return metrics


def _outputs(model: str | os.PathLike, out: str | os.PathLike | None) -> tuple[Path, Path | None]:
    if out is None:
        model = Path(model)
        return model.with_name(f"{model.stem}_verification.png"), None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    return out / "verification.png", out / "calibration.json"
