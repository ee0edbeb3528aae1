"""Processes for the index concurrency test (tests/test_index_concurrency.py): one writer adding crops given as
arrays, readers searching all the while. Every item's pixels, and so its feature, follow from its number (its
`frame`), so a reader can check each row it sees without trusting the index.

    python _index_worker.py writer ROOT BATCHES BATCH_SIZE READERS
    python _index_worker.py reader ROOT NAME MODE          (MODE: load = GalleryIndex.load per search,
                                                             refresh = one object kept current by refresh())
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

DEADLINE_S = 90.0
INITIAL = 10  # items in the index before the writer starts


class ProjectionExtractor:
    """A deterministic stand-in model in plain numpy: a fixed random projection of the 16x8 RGB pixels."""

    backend, name, input_size, resize, model_path, flip = "test", "projection", (16, 8), "stretch", "", False
    weights = np.random.default_rng(0).standard_normal((3 * 16 * 8, 12))
    dim = 12

    def embed_uint8(self, images, show_progress: bool = False) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1) @ self.weights
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def crop(number: int) -> np.ndarray:
    """Item `number`'s HxWx3 uint8 crop (already at the extractor's input size: resizing keeps it exact)."""
    return np.random.default_rng(1000 + number).integers(0, 256, (16, 8, 3), dtype=np.uint8)


def expected_features(numbers: np.ndarray) -> np.ndarray:
    """Reference features, straight from the pixels (no index code involved)."""
    pixels = np.stack([crop(int(n)).transpose(2, 0, 1) for n in numbers]).astype(np.float64)
    x = pixels.reshape(len(numbers), -1) @ ProjectionExtractor.weights
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metadata(numbers: range) -> list[dict]:
    return [{"frame": n, "track": n % 3, "camid": n % 2, "source": "test"} for n in numbers]


def writer(root: Path, batches: int, batch_size: int, readers: int) -> None:
    from reidkit.search import GalleryIndex

    start = time.monotonic()
    while len(list(root.parent.glob("ready-*"))) < readers and time.monotonic() - start < DEADLINE_S / 3:
        time.sleep(0.05)
    index = GalleryIndex.load(root)
    ext = ProjectionExtractor()
    for b in range(batches):
        numbers = range(INITIAL + b * batch_size, INITIAL + (b + 1) * batch_size)
        index.add_images(ext, [crop(n) for n in numbers], metadata(numbers))
        time.sleep(0.1)
    (root.parent / "stop").write_text("done")


def reader(root: Path, name: str, mode: str) -> None:
    from reidkit.search import GalleryIndex

    query = expected_features(np.array([0])).astype(np.float32)
    seen: dict[int, int] = {}  # count -> searches that saw it
    errors: list[str] = []
    index = GalleryIndex.load(root)
    (root.parent / f"ready-{name}").write_text("ready")
    start, searches = time.monotonic(), 0
    while time.monotonic() - start < DEADLINE_S:
        stopped = (root.parent / "stop").exists()  # read before the search: the last search sees the final version
        try:
            if mode == "load":
                index = GalleryIndex.load(root)
            else:
                index.refresh()
            results = index.search(query, k=3, method="exact")
            errors += check(index, results)
        except Exception as exc:  # the test asserts that nothing at all goes wrong
            errors.append(f"{type(exc).__name__}: {exc}")
        seen[index.count] = seen.get(index.count, 0) + 1
        searches += 1
        if stopped or len(errors) > 5:
            break
    summary = {"searches": searches, "counts": seen, "errors": errors}
    (root.parent / f"reader-{name}.json").write_text(json.dumps(summary))


def check(index, results) -> list[str]:
    """Everything a torn read would break: one version's rows, features that belong to their ids, the hit."""
    meta, count = index.metadata, index.count
    problems = []
    if len(index.features) != count or results.version != index.version:
        problems.append(f"features {len(index.features)} vs metadata {count}, version {results.version}")
    if sorted(meta.frames.tolist()) != list(range(count)) or len(set(meta.ids.tolist())) != count:
        problems.append(f"rows are not items 0..{count - 1} with unique ids")
    elif np.abs(index.features - expected_features(meta.frames)).max() > 1e-5:
        problems.append("a row's features do not belong to its item")
    top = results.hits(0)[0]
    if top["frame"] != 0 or abs(top["score"] - 1.0) > 1e-5:
        problems.append(f"query 0 found {top}")
    return problems


if __name__ == "__main__":
    role, root = sys.argv[1], Path(sys.argv[2])
    if role == "writer":
        writer(root, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        reader(root, sys.argv[3], sys.argv[4])
