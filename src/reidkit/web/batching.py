"""Concurrent searches share one forward pass and one scan of the gallery.

An exact search over 100k x 1280 float32 rows reads ~0.5 GB whatever the number of queries, and a CNN forward of 8
crops costs far less than 8 forwards of one: on the 2-core test machine (shared, load ~15) one crop took 219 ms to
embed and 197 ms to search, eight together 924 ms and 583 ms (bench/web_load.py measures the effect). So requests
hand their decoded crop to one worker thread, which takes every crop waiting (up to `max_batch`) at once. Nothing
waits for a batch to fill: a lone request is served immediately, batches form only when requests queue up anyway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

Embed = Callable[[Sequence[Any]], np.ndarray]
Search = Callable[[np.ndarray, int], Any]


class SearchBatcher:
    """`submit(crop, k)` -> (results, row): `results` of a search holding this crop's query at `row`, with at
    least k hits per query (a batch searches with the largest k asked; callers keep their first k)."""

    def __init__(self, embed: Embed, search: Search, max_batch: int = 16):
        self._embed, self._search, self.max_batch = embed, search, max_batch
        self._queue: queue.Queue[tuple[Any, int, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = self.queries = self.largest = 0  # reported by /api/health (the load bench reads them)

    def submit(self, crop: Any, k: int) -> tuple[Any, int]:
        future: Future = Future()
        self._ensure_worker()
        self._queue.put((crop, k, future))
        return future.result()

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="reidkit-search-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.batches, self.queries = self.batches + 1, self.queries + len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                features = self._embed([crop for crop, _, _ in batch])
                results = self._search(features, max(k for _, k, _ in batch))
            except BaseException as exc:  # every waiting request gets the error, the worker carries on
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for row, (_, _, future) in enumerate(batch):
                future.set_result((results, row))
