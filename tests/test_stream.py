"""The decoded-image cache (data/stream.py) against the in-memory decoder path: bit-identical rows, reuse, an
interrupted build resuming, stale or truncated caches rebuilt, and training batches (after augmentation) equal bit
for bit to the in-memory path's when read by DataLoader worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.data import stream
from reidkit.data.images import load_image_tensor
from reidkit.errors import DataError
from reidkit.training.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.loop import train
from reidkit.training.tasks import EmbeddingTask

SIZE = (48, 24)


def _paths(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "bounding_box_train").glob("*.jpg"))


def test_cache_rows_equal_the_in_memory_tensor(tiny_market, tmp_path):
    paths = _paths(tiny_market)
    reference = load_image_tensor(paths, SIZE, "pad")
    images = stream.open_cache(paths, SIZE, "pad", tmp_path)
    assert len(images) == len(paths) and images.shape == tuple(reference.shape)
    rows = np.array([5, 0, 17, 5, len(paths) - 1])
    assert torch.equal(images[rows], reference[rows])
    assert torch.equal(images[np.arange(len(paths))], reference)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tiny_market, tmp_path):
    paths = _paths(tiny_market)[:10]
    first = stream.open_cache(paths, SIZE, "stretch", tmp_path)
    built = first.path.stat().st_mtime_ns
    again = stream.open_cache(paths, SIZE, "stretch", tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == built  # reused, not rewritten
    assert stream.open_cache(paths, SIZE, "pad", tmp_path).path != first.path  # the resize mode is in the key
    copy = tmp_path / "copy"
    copy.mkdir()
    moved = [str(copy / Path(p).name) for p in paths]
    for src, dst in zip(paths, moved):
        Path(dst).write_bytes(Path(src).read_bytes())
    old = stream.open_cache(moved, SIZE, "stretch", tmp_path / "c2")
    os.utime(moved[3], ns=(1, 1))  # same bytes, other mtime: a new key, so never a stale cache
    assert stream.open_cache(moved, SIZE, "stretch", tmp_path / "c2").path != old.path


def test_interrupted_build_resumes_where_it_stopped(tiny_market, tmp_path, monkeypatch):
    paths = _paths(tiny_market)[:20]
    monkeypatch.setattr(stream, "CHUNK", 4)
    real = stream.decode_images
    decoded: list[int] = []

    def dying(items, *args, **kwargs):
        if len(decoded) >= 8:
            raise KeyboardInterrupt  # the build is killed after two chunks
        decoded.extend(range(len(items)))
        return real(items, *args, **kwargs)

    monkeypatch.setattr(stream, "decode_images", dying)
    with pytest.raises(KeyboardInterrupt):
        stream.open_cache(paths, SIZE, "stretch", tmp_path)
    assert not list(tmp_path.glob("*.npy"))  # nothing half-built is visible under the final name
    decoded.clear()
    monkeypatch.setattr(stream, "decode_images", lambda items, *a, **k: (decoded.extend(items), real(items, *a,
                                                                                                   **k))[1])
    images = stream.open_cache(paths, SIZE, "stretch", tmp_path)
    assert decoded == paths[8:]  # only the images after the recorded progress were decoded again
    assert torch.equal(images[np.arange(20)], load_image_tensor(paths, SIZE, "stretch"))


def test_truncated_cache_is_rebuilt_with_a_warning(tiny_market, tmp_path):
    paths = _paths(tiny_market)[:6]
    images = stream.open_cache(paths, SIZE, "stretch", tmp_path)
    data = images.path.read_bytes()
    images.path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="rebuilding it"):
        rebuilt = stream.open_cache(paths, SIZE, "stretch", tmp_path)
    assert torch.equal(rebuilt[np.arange(6)], load_image_tensor(paths, SIZE, "stretch"))


def test_unreadable_and_missing_images_are_named(tiny_market, tmp_path):
    paths = _paths(tiny_market)[:4]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        stream.open_cache(paths + [str(bad)], SIZE, "stretch", tmp_path / "c")
    with pytest.raises(DataError, match="gone.jpg"):
        stream.open_cache(paths + [str(tmp_path / "gone.jpg")], SIZE, "stretch", tmp_path / "c")


class _Recording(EmbeddingTask):
    """Records every augmented training batch through the `_forward` hook."""

    def _forward(self, model, x):
        self.seen = getattr(self, "seen", []) + [x.detach().clone()]
        return super()._forward(model, x)


def _config(stream_on: bool, cache: Path) -> TrainConfig:
    return TrainConfig(model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
                       data=DataConfig(validation="none", height=64, width=32, stream=stream_on, workers=2,
                                       cache_dir=str(cache)),
                       augment=AugmentConfig(),  # flip, translation, colour jitter and erasing all on
                       optim=OptimConfig(epochs=1, p=4, k=2, lr=1e-3, warmup_epochs=0), num_threads=1)


@pytest.mark.slow
def test_streamed_training_batches_equal_in_memory_batches_bit_for_bit(tiny_market, tmp_path):
    runs = {}
    for on in (False, True):
        task = _Recording(_config(on, tmp_path / "cache"), tiny_market, show_progress=False)
        summary = train(task, tmp_path / f"run_{on}")
        runs[on] = (task, summary)
    (memory, mem_summary), (streamed, str_summary) = runs[False], runs[True]
    assert isinstance(streamed.train_images, stream.DecodedImages)  # rows come from the memory-mapped cache
    assert isinstance(memory.train_images, torch.Tensor)
    assert len(memory.seen) == len(streamed.seen) == 3
    for a, b in zip(memory.seen, streamed.seen):
        assert torch.equal(a, b)
    assert mem_summary["log"][0]["loss"] == str_summary["log"][0]["loss"]
