"""Sharded extraction (`extract --shard i/n`) and `merge-features`: the merge equals one process's extraction, and
a missing, repeated or foreign part is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from reidkit.cli.main import main
from reidkit.errors import ConfigError, ReIDError
from reidkit.inference.shards import extract_dataset, merge_feature_parts, parse_shard, part_path, shard_positions


@pytest.fixture
def single(tiny_market, small_checkpoint, tmp_path) -> dict[str, np.ndarray]:
    out, _ = extract_dataset(small_checkpoint, tiny_market, tmp_path / "single.npz", device="cpu")
    with np.load(out) as npz:
        return {k: npz[k] for k in npz.files}


def _parts(tiny_market, checkpoint, out: Path, n: int) -> list[Path]:
    return [extract_dataset(checkpoint, tiny_market, out, device="cpu", shard=(i, n))[0] for i in range(n)]


def test_two_shards_merged_equal_single_process(tiny_market, small_checkpoint, tmp_path, single):
    for i in range(2):  # through the CLI, as two independent jobs would run it
        main(["extract", "--model", str(small_checkpoint), "--data", str(tiny_market), "--out",
              str(tmp_path / "f.npz"), "--shard", f"{i}/2", "--device", "cpu", "--quiet"])
    parts = [tmp_path / "f.part-0-of-2.npz", tmp_path / "f.part-1-of-2.npz"]
    main(["merge-features", *map(str, parts), "--out", str(tmp_path / "merged.npz")])
    with np.load(tmp_path / "merged.npz") as npz:
        merged = {k: npz[k] for k in npz.files}
    assert merged.keys() == single.keys()
    for key, value in single.items():
        if key.endswith("_features"):  # other batches, same per-image arithmetic: equal up to float rounding
            assert merged[key].shape == value.shape
            np.testing.assert_allclose(merged[key], value, rtol=0, atol=1e-6)
        else:  # ids, cameras, paths: identical, in the single-process order
            np.testing.assert_array_equal(merged[key], value)
    with np.load(parts[0]) as p0, np.load(parts[1]) as p1:  # each part holds about half of each split
        assert len(p0["gallery_features"]) + len(p1["gallery_features"]) == len(single["gallery_features"])
        assert abs(len(p0["gallery_features"]) - len(p1["gallery_features"])) <= 1


def test_shard_positions_partition_the_sorted_items():
    paths = [f"img{(7 * i) % 23:03d}.jpg" for i in range(23)]
    shards = [shard_positions(paths, i, 4) for i in range(4)]
    everything = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(everything, np.arange(23))  # each item in exactly one shard
    ordered = sorted(range(23), key=lambda i: paths[i])  # naive reference: contiguous runs of the sorted list
    sizes = [len(s) for s in shards]
    assert sizes == [6, 6, 6, 5]
    start = 0
    for shard, size in zip(shards, sizes):
        assert sorted(shard.tolist()) == sorted(ordered[start:start + size])
        start += size


def test_parse_shard():
    assert parse_shard("1/3") == (1, 3)
    assert parse_shard(None) is None
    assert parse_shard("auto", {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert parse_shard("auto", {}) is None
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert part_path("x/feats.npz", 0, 2) == Path("x/feats.part-0-of-2.npz")


def test_merge_refuses_missing_repeated_foreign_and_damaged_parts(tiny_market, small_checkpoint, tmp_path):
    parts = _parts(tiny_market, small_checkpoint, tmp_path / "f.npz", 3)
    out = tmp_path / "m.npz"
    with pytest.raises(ReIDError, match=r"missing shard\(s\) 1 of 3 \(expected f\.part-1-of-3\.npz\)"):
        merge_feature_parts([parts[0], parts[2]], out)
    with pytest.raises(ReIDError, match="shard 2 of 3 given twice"):
        merge_feature_parts([parts[0], parts[2], parts[2]], out)
    other_n = _parts(tiny_market, small_checkpoint, tmp_path / "g.npz", 2)
    with pytest.raises(ReIDError, match="g.part-0-of-2.npz is shard 0 of 2"):
        merge_feature_parts([*parts, other_n[0]], out)
    flipped = extract_dataset(small_checkpoint, tiny_market, tmp_path / "h.npz", device="cpu", flip=True,
                              shard=(1, 3))[0]
    with pytest.raises(ReIDError, match="h.part-1-of-3.npz differs .* settings"):
        merge_feature_parts([parts[0], flipped, parts[2]], out)
    other_model = tmp_path / "other.pt"
    shutil.copy(small_checkpoint, other_model)
    with open(other_model, "ab") as fh:
        fh.write(b"\0")  # different bytes: another model as far as the fingerprint goes
    foreign = extract_dataset(other_model, tiny_market, tmp_path / "k.npz", device="cpu", shard=(1, 3))[0]
    with pytest.raises(ReIDError, match="k.part-1-of-3.npz differs .* model"):
        merge_feature_parts([parts[0], foreign, parts[2]], out)
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[:len(data) // 2])
    with pytest.raises(ReIDError, match="f.part-1-of-3.npz: damaged"):
        merge_feature_parts(parts, out)
    assert not out.exists()  # nothing written by a refused merge


def test_cli_merge_error_exits_2(tiny_market, small_checkpoint, tmp_path, capsys):
    parts = _parts(tiny_market, small_checkpoint, tmp_path / "f.npz", 2)
    assert main(["merge-features", str(parts[1]), "--out", str(tmp_path / "m.npz")]) == 2
    assert "missing shard(s) 0 of 2" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_ranks_with_shard_auto(tiny_market, small_checkpoint, tmp_path, single):
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "reidkit.cli", "extract",
                    "--model", str(small_checkpoint), "--data", str(tiny_market), "--out", str(tmp_path / "t.npz"),
                    "--shard", "auto", "--device", "cpu", "--quiet"], check=True, env=env, capture_output=True)
    merged = merge_feature_parts([tmp_path / "t.part-0-of-2.npz", tmp_path / "t.part-1-of-2.npz"], tmp_path / "m.npz")
    np.testing.assert_allclose(merged["gallery_features"], single["gallery_features"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(merged["g_paths"], single["g_paths"])
