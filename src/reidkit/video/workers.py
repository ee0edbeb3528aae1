"""Many cameras on Dask distributed: each camera's detection + embedding + tracking is one task on a worker process;
finished tracklets stream back to the client, which associates them into global identities and writes the run.

    track(["cam1.mp4", ..., "cam4.mp4"], "runs/site", model="best.pt", workers=4)        # a local cluster
    track([...], "runs/site", model="best.pt", scheduler="tcp://10.0.0.2:8786")          # an existing cluster

Why Dask distributed (docs/scale.md, "Many cameras"): pure Python, light (a LocalCluster of worker processes starts
in a second or two on this machine), and the same code runs on many machines (`dask scheduler` + `dask worker`).

Why one long task per camera: a camera is sequential (the tracker's state goes from frame to frame) and its
source is a stream (a video decoder, a live RTSP feed), so it cannot be cut into independent chunks without
re-decoding up to each chunk and shipping the tracker state between them (impossible for a live feed). Per-chunk
futures with `as_completed` would need exactly that, or chunks pinned to the worker that holds the state (an
actor, without the fault tolerance that made futures attractive).

Why a `distributed.Queue` for the stream: the task cannot return its tracklets until the source ends (never, for a
live camera), so they must leave it while it runs. distributed 2026.8 has no Pub/Sub any more (the module is gone);
its Queue is the maintained way for a running task to hand small messages to the client. Messages are
msgpack-encodable dicts (numbers, strings, bytes): a tracklet is its record, feature (float32 bytes), rows (float64
bytes) and best crop (PNG, lossless), a few kB, through the scheduler; the queue is bounded (back-pressure).

The same outputs as the single-process run: every closed tracklet carries its position in the single-process order
(`pipeline.ClosedTracklet.key`: time of the frame that closed it, camera index, frame, order) and every camera
reports its progress (the last frame it tracked) with a heartbeat. The client associates a tracklet only when every
camera has tracked past it (an event-time watermark), so `OnlineAssociator` sees tracklets in the same order as in
one process, and offline clustering sees them in the same row order: the same global ids (exactly, when detector
and embeddings give the same numbers in a batch of one camera as in a mixed batch). `ordered=False` associates each
tracklet the moment it arrives (lowest latency; online ids may then differ, since online association depends on
order). The association latency (tracklet closed -> global id) is measured per tracklet.

Faults: a worker process that dies fails its camera at once (the local cluster's scheduler allows no retries, so
the task is not silently rerun from the start; on an external cluster a rerun is detected by its new attempt id),
a camera task that raises fails the run naming the camera, and a started camera silent for `stall_seconds` fails
it too. Either way the other cameras are cancelled, everything received so far is written like an interrupted
run (`"complete": false`), and a ReIDError names the camera and the cause: no hang, nothing silently lost.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReIDError
from ..utils import progress
from .outputs import TrackletRecord
from .pipeline import (
    STAGES,
    CameraGroup,
    ClosedTracklet,
    TrackResult,
    TrackRun,
    _build_tracker,
    _Camera,
    build_detectors,
    open_sources,
)

HEARTBEAT_SECONDS = 0.25   # how often a camera reports the last frame it tracked (the watermark's resolution)
CONNECT_TIMEOUT = "5s"     # an existing scheduler must answer within this
FINISH_GRACE_SECONDS = 10.0  # a finished task's end message is on the queue well before this
QUEUE_SIZE = 10_000        # messages waiting at the scheduler before camera tasks block (back-pressure)
_EXTRACTORS: dict[tuple, Any] = {}  # per worker process: a model is loaded once for all cameras it serves


@dataclass
class CameraJob:
    """What a worker needs to track one camera: its position, a source it can open (a path made absolute, a URL,
    or a picklable FrameSource) and its detector (a name/path, or a picklable detector object)."""

    index: int
    name: str
    source: Any
    detector: Any

    @classmethod
    def make(cls, index: int, spec: Any, opened: Any, detector: Any) -> CameraJob:
        from .sources import FrameSource, is_live_spec

        portable = spec if isinstance(spec, FrameSource) or is_live_spec(spec) else str(Path(spec).resolve())
        return cls(index, opened.camera, portable, _portable(detector))


def _portable(spec: Any) -> Any:
    """Paths absolute (workers may start in another folder); names and objects as they are."""
    if isinstance(spec, (str, os.PathLike)) and Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


# ---------------------------------------------------------------------------------------------- the worker

def _extractor(model: Any, batch_size: int, device: str, threads: int) -> Any:
    if hasattr(model, "embed_uint8"):
        return model
    key = (str(model), batch_size, device, threads)
    if key not in _EXTRACTORS:
        from ..inference import build_extractor

        _EXTRACTORS[key] = build_extractor(model, batch_size=batch_size, device=device, threads=threads)
    return _EXTRACTORS[key]


def track_camera(job: CameraJob, model: Any, options: Any, queue_name: str, batch_size: int = 32,
                 device: str = "auto", threads: int = 1) -> dict[str, Any]:
    """The Dask task of one camera: the single-process per-camera code (`pipeline.CameraGroup` with this camera
    alone), its finished tracklets and heartbeats put on the run's queue as they happen. Returns the camera's
    end message (also queued)."""
    import torch
    from distributed import Queue

    setup = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    queue = Queue(queue_name)
    attempt = uuid.uuid4().hex
    (source,) = open_sources([job.source])
    detector = build_detectors(job.detector, [source], options.batch_frames, threads=threads)[0]
    extractor = _extractor(model, batch_size, device, threads)
    cam = _Camera(job.index, source, detector, _build_tracker(options.tracker, float(source.fps)))
    timings, notes = dict.fromkeys(STAGES, 0.0), []
    last_beat = [0.0]

    def heartbeat(kind: str = "progress") -> dict[str, Any]:
        message = {"kind": kind, "camera": job.index, "attempt": attempt, "frames": cam.summary.frames,
                   "watermark": [cam.last_frame[0], job.index, cam.last_frame[1]], "sent": time.time()}
        queue.put(message)
        last_beat[0] = time.monotonic()
        return message

    def tick() -> None:
        if time.monotonic() - last_beat[0] >= HEARTBEAT_SECONDS:
            heartbeat()

    def emit(closed: ClosedTracklet) -> None:
        queue.put({"kind": "tracklet", "camera": job.index, "attempt": attempt, "sent": time.time(),
                   **encode_tracklet(closed)})

    heartbeat("start")
    started, cpu_started = time.perf_counter(), time.process_time()
    group = CameraGroup([cam], extractor, options, timings, notes)
    interrupted = group.run(emit, tick)
    end = {"kind": "end", "camera": job.index, "attempt": attempt, "sent": time.time(),
           "summary": asdict(cam.summary), "timings": timings, "notes": notes, "interrupted": interrupted,
           "pid": os.getpid(), "seconds": time.perf_counter() - started, "setup_seconds": started - setup,
           "cpu_seconds": time.process_time() - cpu_started}
    queue.put(end)
    return end


# ------------------------------------------------------------------------------------------- the messages

def encode_tracklet(closed: ClosedTracklet) -> dict[str, Any]:
    """A ClosedTracklet as msgpack-encodable fields (the Queue's wire format)."""
    import cv2

    rec = {k: v for k, v in asdict(closed.record).items() if k != "feature"}
    rec["best_box"] = None if rec["best_box"] is None else list(rec["best_box"])
    crop = None
    if closed.crop is not None:
        ok, png = cv2.imencode(".png", np.ascontiguousarray(closed.crop))  # lossless: the same JPEG as in-process
        crop = png.tobytes() if ok else None
    feature = np.asarray(closed.record.feature, np.float32)
    rows = np.ascontiguousarray(closed.rows, np.float64)
    return {"record": rec, "feature": feature.tobytes(), "rows": rows.tobytes(), "num_rows": len(rows),
            "crop": crop, "key": list(closed.key)}


def decode_tracklet(message: dict[str, Any]) -> ClosedTracklet:
    import cv2

    rec = dict(message["record"])
    rec["best_box"] = None if rec["best_box"] is None else tuple(rec["best_box"])
    record = TrackletRecord(**rec, feature=np.frombuffer(message["feature"], np.float32).copy())
    rows = np.frombuffer(message["rows"], np.float64).reshape(message["num_rows"], 6).copy()
    crop = None
    if message["crop"] is not None:
        crop = cv2.imdecode(np.frombuffer(message["crop"], np.uint8), cv2.IMREAD_UNCHANGED)
    key = message["key"]
    return ClosedTracklet(record, rows, crop, (float(key[0]), int(key[1]), int(key[2]), int(key[3])))


# --------------------------------------------------------------------------------------------- the client

@dataclass
class _Stream:
    """The client's view of the cameras: watermarks, pending tracklets (a heap by single-process key), latencies."""

    cameras: int
    ordered: bool = True
    watermarks: list[tuple[float, int, float]] = field(default_factory=list)
    attempts: list[str | None] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    last_heard: list[float] = field(default_factory=list)
    pending: list[tuple[tuple, int, ClosedTracklet, float]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)       # seconds: closed on the worker -> global id
    transit: list[float] = field(default_factory=list)         # seconds: closed on the worker -> on the client
    finished_at: dict[int, float] = field(default_factory=dict)
    ordered_requested: bool = True
    seq: int = 0

    def __post_init__(self) -> None:
        self.watermarks = [(-math.inf, k, -1) for k in range(self.cameras)]
        self.attempts, self.ended = [None] * self.cameras, [False] * self.cameras
        self.last_heard = [math.nan] * self.cameras

    def frontier(self) -> tuple[float, int, float]:
        """Every camera has tracked up to here (ended cameras do not hold anything back)."""
        live = [w for w, done in zip(self.watermarks, self.ended) if not done]
        return min(live) if live else (math.inf, self.cameras, math.inf)

    def ready(self) -> list[tuple[ClosedTracklet, float]]:
        """Pending tracklets every camera has tracked past, in single-process order (all of them if unordered)."""
        out, front = [], self.frontier()
        while self.pending and (not self.ordered or tuple(self.pending[0][0][:3]) <= front):
            _, _, closed, sent = heapq.heappop(self.pending)
            out.append((closed, sent))
        return out


def start_local_cluster(workers: int, threads_per_worker: int = 1) -> tuple[Any, Any]:
    """A LocalCluster of `workers` processes on loopback only (no dashboard), where a task whose worker dies is not
    retried (the camera fails at once instead of restarting from its first frame)."""
    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": str(threads_per_worker), "OMP_WAIT_POLICY": "PASSIVE",
           "OPENBLAS_NUM_THREADS": str(threads_per_worker), "MKL_NUM_THREADS": str(threads_per_worker)}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                           scheduler_kwargs={"allowed_failures": 0}, env=env)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def open_cluster(workers: int = 0, scheduler: str | None = None, threads_per_worker: int = 1) -> tuple[Any, Any]:
    """(client, cluster): a client of the Dask scheduler at `scheduler` (cluster None), or of a new local cluster
    of `workers` processes. An unreachable scheduler is a ReIDError naming it."""
    if not scheduler:
        return start_local_cluster(max(workers, 1), threads_per_worker)
    from distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT), None
    except (OSError, ValueError) as exc:
        raise ReIDError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler ({exc})") from exc


def check_capacity(client: Any, cameras: int, live: int) -> int:
    """The cluster's worker threads; too few for live cameras (each holds a thread for ever) is a ReIDError."""
    nthreads = sum(client.nthreads().values())
    if live and nthreads < cameras:
        raise ReIDError(f"{cameras} cameras ({live} live) but the cluster has {nthreads} worker thread(s): a live "
                        "camera holds its thread for ever, so every camera needs one (--workers)")
    return nthreads


def track_on_dask(run: TrackRun, jobs: list[CameraJob], cluster: tuple[Any, Any], *, model: Any,
                  device: str = "auto", batch_size: int = 32, threads_per_worker: int = 1, ordered: bool = True,
                  stall_seconds: float = 300.0, poll_seconds: float = 0.1, close: bool = True) -> TrackResult:
    """Track each job's camera in its own Dask task and feed `run` (the client side of `pipeline.track`).

    `cluster` comes from `open_cluster` and is closed here (`close`). Workers of an existing cluster need reidkit,
    the model and the sources at the same paths. In the result, the stage seconds are summed over the workers;
    `result.workers` holds per camera task its process, frames, seconds and frames/s, and the percentiles of the
    association latency (a tracklet closed on its worker -> its global id on the client) and of the queue transit
    (closed -> received; the difference is the wait for the other cameras' watermark)."""
    client, local = cluster
    try:
        return _drive(run, jobs, client, model=_portable(model), device=device, batch_size=batch_size,
                      threads=threads_per_worker, ordered=ordered, stall_seconds=stall_seconds, poll=poll_seconds)
    finally:
        if close:
            client.close()
            if local is not None:
                local.close()


def _drive(run: TrackRun, jobs: list[CameraJob], client: Any, *, model: Any, device: str, batch_size: int,
           threads: int, ordered: bool, stall_seconds: float, poll: float) -> TrackResult:
    from distributed import Queue

    nthreads = check_capacity(client, len(jobs), sum(c.summary.live for c in run.cameras))
    if nthreads < len(jobs):
        run.notes.append(f"{len(jobs)} cameras on {nthreads} worker thread(s): cameras wait for a free worker, and "
                         "ordered association waits for them")
    queue = Queue(f"reidkit-track-{uuid.uuid4().hex}", client=client, maxsize=QUEUE_SIZE)
    futures = [client.submit(track_camera, job, model, run.options, queue.name, batch_size, device, threads,
                             key=f"track-{job.name}-{uuid.uuid4().hex[:8]}", pure=False, retries=0)
               for job in jobs]
    stream = _Stream(len(jobs), ordered)
    stream.ordered_requested = ordered
    bars = [progress(total=getattr(c.source, "num_frames", None), desc=c.name, unit="frame", position=k,
                     enabled=run.show_progress, leave=True) for k, c in enumerate(run.cameras)]
    interrupted, failure = False, None
    try:
        while not all(stream.ended):
            for message in _receive(queue, poll):
                _handle(message, stream, run, jobs, bars)
            for closed, sent in stream.ready():
                run.accept(closed)
                stream.latencies.append(time.time() - sent)
            run.tick()
            failure = _check(futures, jobs, stream, stall_seconds)
            if failure is not None:
                break
    except ReIDError as exc:  # a camera restarted behind our back (see _handle)
        failure = str(exc)
    except KeyboardInterrupt:
        interrupted = True
        run.notes.append("interrupted (Ctrl-C): the cameras were stopped; outputs hold the tracklets received "
                         "until then (tracks still open on the workers are lost)")
    finally:
        for bar in bars:
            bar.close()
        if failure is not None or interrupted:
            client.cancel(futures, force=True)
        stream.ordered = False
        for closed, sent in stream.ready():  # whatever arrived is written
            run.accept(closed)
            stream.latencies.append(time.time() - sent)
        with contextlib.suppress(Exception):  # the cluster may be going down; the queue dies with it
            queue.close()
    if failure is not None:
        run.notes.append(f"failed: {failure}")
    _latency_stats(run, stream)
    result = run.finish(interrupted or failure is not None)
    if failure is not None:
        raise ReIDError(f"{failure}; {run.out} holds the {len(run.records)} tracklet(s) received before, marked "
                        "incomplete")
    return result


def _receive(queue: Any, poll: float) -> list[dict[str, Any]]:
    """The messages waiting, or (none waiting) none after a `poll` seconds' pause. Not `get(timeout=...)`: in
    distributed 2026.8 the scheduler logs every such timeout as an ERROR with a traceback."""
    messages = queue.get(batch=True)
    if not messages:
        time.sleep(poll)
    return messages


def _handle(message: dict[str, Any], stream: _Stream, run: TrackRun, jobs: list[CameraJob], bars: list[Any]) -> None:
    k = int(message["camera"])
    name = jobs[k].name
    if stream.attempts[k] is None:
        stream.attempts[k] = message["attempt"]
    elif stream.attempts[k] != message["attempt"]:
        raise ReIDError(f"camera {name}: its task was started a second time (a worker died and the cluster retried "
                        "it from the first frame); set distributed.scheduler.allowed-failures to 0 on the cluster")
    stream.last_heard[k] = time.monotonic()
    if message["kind"] == "tracklet":
        closed = decode_tracklet(message)
        stream.transit.append(time.time() - message["sent"])
        stream.watermarks[k] = max(stream.watermarks[k], tuple(closed.key[:3]))
        heapq.heappush(stream.pending, (closed.key, stream.seq, closed, message["sent"]))
        stream.seq += 1
        return
    if message["kind"] in ("progress", "start"):
        stream.watermarks[k] = max(stream.watermarks[k], tuple(message["watermark"]))
        bars[k].update(int(message["frames"]) - bars[k].n)
        run.cameras[k].summary.frames = int(message["frames"])
        return
    if message["kind"] == "end":
        summary = run.cameras[k].summary
        for field_name, value in message["summary"].items():
            if field_name not in ("name", "spec", "size", "live"):
                setattr(summary, field_name, value)
        for stage, seconds in message["timings"].items():  # summed over the workers
            run.timings[stage] = run.timings.get(stage, 0.0) + seconds
        run.notes.extend(message["notes"])
        run.workers.setdefault("cameras", {})[jobs[k].name] = {
            "pid": message["pid"], "frames": summary.frames, "seconds": round(message["seconds"], 3),
            "setup_seconds": round(message["setup_seconds"], 3), "cpu_seconds": round(message["cpu_seconds"], 3),
            "frames_per_second": round(summary.frames / message["seconds"], 2) if message["seconds"] else None,
            "seconds_per_stage": {stage: round(v, 3) for stage, v in message["timings"].items()}}
        bars[k].update(summary.frames - bars[k].n)
        stream.ended[k] = True


def _check(futures: list[Any], jobs: list[CameraJob], stream: _Stream, stall_seconds: float) -> str | None:
    """A failed camera task (a dead worker, an exception) or a started camera gone silent, as a message."""
    for k, (future, job) in enumerate(zip(futures, jobs)):
        if stream.ended[k]:
            continue
        if future.status == "error":
            exc = future.exception()
            if type(exc).__name__ == "KilledWorker":
                return f"camera {job.name}: its worker process died while tracking it ({type(exc).__name__})"
            return f"camera {job.name}: failed on its worker: {type(exc).__name__}: {exc}"
        if future.status == "cancelled":
            return f"camera {job.name}: its task was cancelled (the cluster lost it)"
        if future.status == "finished":  # its end message is queued before the task returns: a moment's grace
            stream.finished_at[k] = stream.finished_at.get(k, time.monotonic())
            if time.monotonic() - stream.finished_at[k] > FINISH_GRACE_SECONDS:
                return f"camera {job.name}: its task ended but its end message never arrived"
        heard = stream.last_heard[k]
        if not math.isnan(heard) and time.monotonic() - heard > stall_seconds:
            return f"camera {job.name}: no word from its worker for {stall_seconds:g} s (stalled or lost)"
    return None


def _latency_stats(run: TrackRun, stream: _Stream) -> None:
    """Association latency (a tracklet closed on its worker -> its global id on the client) and queue transit
    (closed -> received), seconds, in the result's `workers`."""
    for name, values in (("association_latency", stream.latencies), ("queue_transit", stream.transit)):
        if values:
            v = np.asarray(values)
            run.workers[f"{name}_seconds"] = {"p50": round(float(np.percentile(v, 50)), 4),
                                              "p95": round(float(np.percentile(v, 95)), 4),
                                              "max": round(float(v.max()), 4), "count": len(v)}
    run.workers["ordered"] = stream.ordered_requested
