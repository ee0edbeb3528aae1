"""MOTChallenge evaluation as the video verbs need it. The files themselves are read and written by
`reidkit.data.mot` (a dataset layout: the data layer's video generator writes them too)."""

import os

from ..data.mot import MotTable, read_gt, read_gt_distractors


def evaluation_pair(gt_path: str | os.PathLike, pred: MotTable) -> tuple[MotTable, MotTable]:
    """(ground truth, tracks) as MOTChallenge evaluates them: the considered pedestrians of `gt_path`, and for MOT16/17
    files the tracks without the boxes that match a distractor (static person, reflection, ...), as TrackEval does."""
    from ..metrics.tracking import drop_distractor_matches

    gt = read_gt(gt_path)
    full = read_gt_distractors(gt_path)
    if full is not None and full[1].any():
        pred = pred.select(drop_distractor_matches(pred, full[0], full[1]))
    return gt, pred
