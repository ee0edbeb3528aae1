"""Frame sources: video files, frame folders (MOTChallenge img1/) and live streams, one camera each.

Interface (stable; the tracker and pipeline are written against it):
- `Frame`: index (0-based decode order), time in seconds, RGB uint8 HxWx3 array.
- `open_source(spec) -> FrameSource`: iterable of Frame, with `.camera` (name), `.fps`, `.size` (w, h),
  `.num_frames` (None when unknown, e.g. live), `.close()`; a context manager.

Extensions: `open_source(spec, camera=None, fps=None)` (override the name / frame rate), `FrameSource.spec` (what
was opened, for messages), `.is_live`, `.frames_read`; `interleave(sources)` reads several cameras in time order;
`SyntheticSource(SynthVideoConfig, camera)` renders a synthetic camera on the fly (long streams without files).

Every source is a stream: frames are decoded one at a time as the iterator advances and nothing keeps earlier
frames, so memory stays flat however long the video (or live stream) is. Decoding uses PyAV (FFmpeg: mp4, mkv,
avi, raw .264/.265 elementary streams, RTSP/HTTP); OpenCV's VideoCapture is the fallback for files PyAV cannot open
and the reader of local camera devices (integer index). Frame folders are decoded by `reidkit.data.images`.

Bad input: a missing file, a folder without images or a video without a decodable frame is a DataError naming the
source; a video that breaks off part-way (truncated, corrupt) yields what decodes and then warns naming the file
and the frame where it stopped; a live source that stops delivering frames ends the stream with a warning naming it.
"""

from __future__ import annotations

import heapq
import os
import re
import time as _time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import is_image_name, read_image
from ..data.mot import read_seqinfo
from ..errors import DataError

__all__ = ["DEFAULT_FPS", "FolderSource", "Frame", "FrameSource", "OpenCVSource", "PyAVSource",
           "SourceWarning", "SyntheticSource", "interleave", "is_live_spec", "open_source"]

DEFAULT_FPS = 25.0  # frame folders without seqinfo.ini and streams that do not declare a rate
LIVE_TIMEOUT = 10.0  # seconds a live source may stay silent before it counts as gone


@dataclass(frozen=True)
class Frame:
    index: int          # 0-based position in the source (MOT files write index + 1)
    time: float         # seconds since the source's start
    image: np.ndarray   # RGB uint8, H x W x 3


class SourceWarning(UserWarning):
    """A source ended early (truncated or corrupt video, a live stream that went silent) or skipped frames."""


class FrameSource:
    """Iterable of `Frame`s of one camera. Subclasses implement `_frames()`; iterate once."""

    is_live = False

    def __init__(self, spec: str, camera: str, fps: float, size: tuple[int, int], num_frames: int | None) -> None:
        self.spec, self.camera, self.fps, self.size, self.num_frames = spec, camera, fps, size, num_frames
        self.frames_read = 0

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        for frame in self._frames():
            self.frames_read += 1
            yield frame

    def close(self) -> None:
        """Release the decoder or device; safe to call twice."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(camera={self.camera!r}, spec={self.spec!r}, fps={self.fps:g}, "
                f"size={self.size}, num_frames={self.num_frames})")


def _warn(message: str) -> None:
    warnings.warn(message, SourceWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------
# Video files and network streams through PyAV.
# ------------------------------------------------------------------------------------------------------------

def _quiet_ffmpeg() -> None:
    """FFmpeg prints its own decoder complaints ("partial file", "error splitting NAL units") to stderr; the sources
    report the same as one warning naming the file and frame, so FFmpeg's lines are silenced unless the application
    configured PyAV's logging itself."""
    import av.logging

    if av.logging.get_level() is None:  # PyAV's own logging off: FFmpeg prints to the terminal at its libav level
        av.logging.set_libav_level(av.logging.PANIC)


class PyAVSource(FrameSource):
    """A video file, or (is_live=True) an RTSP/HTTP stream, decoded by PyAV."""

    def __init__(self, spec: str, camera: str, fps: float | None = None, live: bool = False) -> None:
        import av

        _quiet_ffmpeg()

        self.is_live, self.spec = live, spec
        options = {"rtsp_transport": "tcp"} if spec.startswith("rtsp://") else {}
        try:
            self._container = av.open(spec, options=options, timeout=(LIVE_TIMEOUT, LIVE_TIMEOUT) if live else None)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot open video {spec}: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise DataError(f"cannot open video {spec}: it has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: FFmpeg decodes on the cores the detector leaves idle
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        declared = int(stream.frames or 0) or None
        self._iterator = self._decode()
        try:  # decode the first frame now: a video without any is refused here, naming it
            self._first: Frame | None = next(self._iterator)
        except StopIteration:
            self.close()
            raise DataError(f"video {spec}: no decodable frame (empty, or not a video)") from None
        height, width = self._first.image.shape[:2]
        super().__init__(spec, camera, float(fps or (float(rate) if rate else DEFAULT_FPS)), (width, height),
                         None if live else declared)

    def _decode(self) -> Iterator[Frame]:
        import av

        index, start, self._broken = 0, None, False
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
                decoded = packet.decode()
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                decoded = self._drain()
                what = f"live source {self.spec}: stopped delivering frames" if self.is_live else \
                    f"{self.spec}: is truncated or corrupt"
                stop = index + len(decoded)
                _warn(f"{what} at frame {stop} ({exc}); kept the {stop} frame(s) decoded before it")
                packets, self._broken = iter(()), True
            for av_frame in decoded:
                if av_frame.time is not None:
                    start = av_frame.time if start is None else start
                    seconds = av_frame.time - start
                else:  # raw elementary streams carry no timestamps
                    seconds = index / (getattr(self, "fps", None) or self._nominal_rate())
                yield Frame(index, float(seconds), av_frame.to_ndarray(format="rgb24"))
                index += 1

    def _drain(self) -> list:
        """Frames still buffered in the decoder after the input broke off."""
        import av

        try:
            return list(self._stream.codec_context.decode(None))
        except (av.error.FFmpegError, OSError):
            return []

    def _nominal_rate(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else DEFAULT_FPS

    def _frames(self) -> Iterator[Frame]:
        if self._first is None:
            raise DataError(f"{self.spec}: a frame source can be iterated only once")
        first, self._first = self._first, None
        yield first
        count = 1
        for frame in self._iterator:
            count += 1
            yield frame
        if self.num_frames and count < self.num_frames and not self._broken:
            _warn(f"{self.spec}: stopped at frame {count} of the {self.num_frames} the file declares "
                  f"(truncated?); kept the {count} frame(s) decoded")
        if self.is_live and not self._broken:
            _warn(f"live source {self.spec}: the stream ended after {count} frame(s)")

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


class OpenCVSource(FrameSource):
    """A local camera device (integer index) or a file PyAV cannot open, read by cv2.VideoCapture."""

    def __init__(self, spec: str | int, camera: str, fps: float | None = None, live: bool = False) -> None:
        import cv2

        self.is_live = live
        self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            raise DataError(f"cannot open {'camera' if live else 'video'} {spec}: OpenCV could not open it")
        ok, bgr = self._cap.read()
        if not ok:
            self.close()
            raise DataError(f"{'camera' if live else 'video'} {spec}: no decodable frame")
        self._first = bgr
        declared = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rate = self._cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        super().__init__(str(spec), camera, float(fps or rate), (bgr.shape[1], bgr.shape[0]),
                         None if live or declared <= 0 else declared)

    def _frames(self) -> Iterator[Frame]:
        import cv2

        if self._first is None:
            raise DataError(f"{self.spec}: a frame source can be iterated only once")
        bgr, self._first = self._first, None
        index, started = 0, _time.monotonic()
        while bgr is not None:
            seconds = _time.monotonic() - started if self.is_live else index / self.fps
            yield Frame(index, seconds, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
            ok, bgr = self._cap.read()
            if not ok:
                bgr = None
        if self.is_live:
            _warn(f"live source {self.spec}: stopped delivering frames after {index} frame(s)")
        elif self.num_frames and index < self.num_frames:
            _warn(f"{self.spec}: stopped at frame {index} of the {self.num_frames} the file declares (truncated?)")

    def close(self) -> None:
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()
            self._cap = None


# ------------------------------------------------------------------------------------------------------------
# Frame folders.
# ------------------------------------------------------------------------------------------------------------

class FolderSource(FrameSource):
    """Sorted images of a folder. Names that are all digits (MOTChallenge 000001.jpg) give the frame index
    (number - 1), so ground truth stays aligned when a frame is missing; otherwise the sorted position does."""

    def __init__(self, folder: Path, camera: str, fps: float, spec: str) -> None:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.is_file() and is_image_name(e.name))
        if not names:
            raise DataError(f"frame folder {spec}: no images (.jpg, .jpeg, .png, .bmp) in {folder}")
        stems = [os.path.splitext(n)[0] for n in names]
        if all(s.isdigit() for s in stems):
            numbers = [int(s) for s in stems]
            order = np.argsort(numbers, kind="stable")
            names = [names[i] for i in order]
            base = 1 if min(numbers) >= 1 else 0
            self._indices = [numbers[i] - base for i in order]
        else:
            self._indices = list(range(len(names)))
        self._paths = [folder / n for n in names]
        first = self._load(0)
        if first is None:
            raise DataError(f"frame folder {spec}: cannot read its first image {self._paths[0]}")
        self._first = first
        super().__init__(spec, camera, fps, (first.shape[1], first.shape[0]), len(names))

    def _load(self, k: int) -> np.ndarray | None:
        try:
            return np.asarray(read_image(self._paths[k]))
        except DataError as exc:
            _warn(f"frame folder {self.spec}: skipped frame {self._indices[k]}: {exc}")
            return None

    def _frames(self) -> Iterator[Frame]:
        skipped = 0
        for k, index in enumerate(self._indices):
            image = self._first if k == 0 else self._load(k)
            if image is None:
                skipped += 1
                continue
            yield Frame(index, index / self.fps, image)
        if skipped:
            _warn(f"frame folder {self.spec}: {skipped} unreadable image(s) skipped (named above)")


def _folder_source(path: Path, camera: str | None, fps: float | None) -> FrameSource:
    """A MOTChallenge sequence (SEQ/ with img1/ and seqinfo.ini, or SEQ/img1 itself) or any image folder."""
    seq_dir, images = path, path
    if (path / "img1").is_dir():
        images = path / "img1"
    elif path.name == "img1" and (path.parent / "seqinfo.ini").is_file():
        seq_dir = path.parent
    info = read_seqinfo(seq_dir / "seqinfo.ini") if (seq_dir / "seqinfo.ini").is_file() else None
    if info is not None and images is path and (path / info.im_dir).is_dir():
        images = path / info.im_dir
    name = camera or seq_dir.name
    return FolderSource(images, name, float(fps or (info.fps if info else DEFAULT_FPS)), str(path))


class SyntheticSource(FrameSource):
    """One camera of `reidkit.data.synth_video` rendered on the fly, nothing written to disk: a stream of any length
    (e.g. 30 minutes) for memory and speed measurements. `.ground_truth` collects the MOT rows of the frames read
    when `keep_ground_truth` is set (off by default, so memory stays flat)."""

    def __init__(self, cfg, camera: int = 0, name: str | None = None, keep_ground_truth: bool = False) -> None:
        from ..data.synth_video import SyntheticVideo

        self._video = SyntheticVideo(cfg)
        self._camera_index, self._keep = camera, keep_ground_truth
        self.ground_truth: list = []
        super().__init__(f"synthetic camera {camera + 1} (seed {cfg.seed})", name or cfg.camera_names[camera],
                         float(cfg.fps), (cfg.width, cfg.height), cfg.num_frames)

    def _frames(self) -> Iterator[Frame]:
        for index, image, table in self._video.frames(self._camera_index):
            if self._keep:
                self.ground_truth.append(table)
            yield Frame(index, index / self.fps, image)


# ------------------------------------------------------------------------------------------------------------
# The entry point.
# ------------------------------------------------------------------------------------------------------------

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)


def is_live_spec(spec: str | int | os.PathLike) -> bool:
    return isinstance(spec, int) or (isinstance(spec, str) and (spec.isdigit() or bool(_URL.match(spec))))


def _live_name(spec: str) -> str:
    """A file-name-safe camera name for a URL: host, port and path without extension, e.g. rtsp://10.0.0.5/cam1 ->
    10.0.0.5_cam1."""
    rest = _URL.sub("", spec).split("@")[-1].split("?")[0]
    rest = re.sub(r"\.[A-Za-z0-9]{2,4}$", "", rest)  # lobby.ts -> lobby
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("_") or "live"


def open_source(spec: str | int | os.PathLike, camera: str | None = None, fps: float | None = None) -> FrameSource:
    """Open one camera: a video file, a frame folder, a camera index (int or digit string) or a stream URL.

    The camera name is `camera` if given, else the file stem, the folder name (a MOTChallenge sequence's folder
    name, also when `spec` is its img1/), `cam<index>` for a device or host_path for a URL. `fps` overrides the
    rate the source declares (seqinfo.ini frameRate for MOT folders, the container's rate for videos,
    DEFAULT_FPS otherwise); frame times are index / fps unless the video carries timestamps.
    """
    if is_live_spec(spec):
        if isinstance(spec, int) or str(spec).isdigit():
            index = int(spec)
            return OpenCVSource(index, camera or f"cam{index}", fps, live=True)
        return PyAVSource(str(spec), camera or _live_name(str(spec)), fps, live=True)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"video source {path}: no such file or folder")
    if path.is_dir():
        return _folder_source(path, camera, fps)
    name = camera or path.stem
    try:
        return PyAVSource(str(path), name, fps)
    except DataError as exc:
        try:
            return OpenCVSource(str(path), name, fps)
        except DataError:
            raise exc from None


def interleave(sources: Iterable[FrameSource]) -> Iterator[tuple[int, Frame]]:
    """(source position, frame) pairs from several cameras, merged by frame time (ties: source order).

    Cameras keep their own frame rates: a 10 fps and a 25 fps camera give 10 and 25 frames per second of video,
    each at its own time in seconds; nothing is resampled or dropped. Memory holds one frame per source.
    """
    def keyed(k: int, source: FrameSource) -> Iterator[tuple[float, int, int, Frame]]:
        for frame in source:
            yield frame.time, k, frame.index, frame

    merged = heapq.merge(*(keyed(k, source) for k, source in enumerate(sources)), key=lambda item: item[:3])
    for _, k, _, frame in merged:
        yield k, frame
