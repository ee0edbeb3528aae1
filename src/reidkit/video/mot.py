"""MOTChallenge files for the video pipeline: the implementation is `reidkit.data.mot` (a dataset layout, so the
data layer, e.g. `reidkit.data.synth_video`, can write it too); this module re-exports it."""

from ..data.mot import (
    MotTable,
    MotWriter,
    SeqInfo,
    format_rows,
    ground_truth_file,
    read_gt,
    read_gt_dir,
    read_mot,
    read_run,
    read_seqinfo,
    write_mot,
    write_seqinfo,
)

__all__ = ["MotTable", "MotWriter", "SeqInfo", "format_rows", "ground_truth_file", "read_gt", "read_gt_dir",
           "read_mot", "read_run", "read_seqinfo", "write_mot", "write_seqinfo"]
