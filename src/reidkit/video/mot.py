"""MOTChallenge files for the video pipeline: the implementation is `reidkit.data.mot` (a dataset layout, so the
data layer, e.g. `reidkit.data.synth_video`, can write it too); this module re-exports it and adds
`evaluation_pair`, the ground truth and tracks as MOTChallenge's evaluation sees them."""

import os

from ..data.mot import (
    DISTRACTOR_CLASSES,
    MotTable,
    MotWriter,
    SeqInfo,
    format_rows,
    ground_truth_file,
    read_gt,
    read_gt_dir,
    read_gt_distractors,
    read_mot,
    read_run,
    read_seqinfo,
    write_mot,
    write_seqinfo,
)

__all__ = ["DISTRACTOR_CLASSES", "MotTable", "MotWriter", "SeqInfo", "evaluation_pair", "format_rows",
           "ground_truth_file", "read_gt", "read_gt_dir", "read_gt_distractors", "read_mot", "read_run", "read_seqinfo",
           "write_mot", "write_seqinfo"]


def evaluation_pair(gt_path: str | os.PathLike, pred: MotTable) -> tuple[MotTable, MotTable]:
    """(ground truth, tracks) as MOTChallenge evaluates them: the considered pedestrians of `gt_path`, and for MOT16/17
    files the tracks without the boxes that match a distractor (static person, reflection, ...), as TrackEval does."""
    from ..metrics.tracking import drop_distractor_matches

    gt = read_gt(gt_path)
    full = read_gt_distractors(gt_path)
    if full is not None and full[1].any():
        pred = pred.select(drop_distractor_matches(pred, full[0], full[1]))
    return gt, pred
