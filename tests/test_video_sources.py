"""Frame sources (video files, frame folders, bad input) and MOTChallenge file I/O, against hand-written references."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data.mot import MotTable, MotWriter, SeqInfo, read_gt, read_mot, read_seqinfo, write_mot, write_seqinfo
from reidkit.errors import DataError
from reidkit.video.sources import interleave, open_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
W, H, N = 64, 48, 30


def _grey(k: int) -> int:
    return 8 * k


def _write_video(path: Path, frames: int = N, fps: int = 10) -> None:
    """Frame k: left half random texture (so the file is not tiny), right half flat grey 8k."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for k in range(frames):
            img = np.full((H, W, 3), _grey(k), np.uint8)
            img[:, : W // 2] = rng.integers(0, 256, (H, W // 2, 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "lobby.mp4"
    _write_video(path)
    return path


def test_video_file_reads_back_every_frame(video):
    with open_source(video) as source:
        assert source.camera == "lobby" and source.size == (W, H) and source.fps == 10 and source.num_frames == N
        frames = list(source)
    assert [f.index for f in frames] == list(range(N))
    assert np.allclose([f.time for f in frames], np.arange(N) / 10)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    greys = [f.image[:, W // 2 + 4:].mean() for f in frames]  # away from the chroma edge
    assert np.allclose(greys, [_grey(k) for k in range(N)], atol=4)


def test_truncated_video_keeps_what_decodes_and_warns_naming_it(video, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = video.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.warns(UserWarning, match=r"cut\.mp4.*stopped at frame \d+") as record:
        frames = list(open_source(cut))
    assert 0 < len(frames) < N
    stop = int(str(record[0].message).split("frame ")[1].split()[0])
    assert stop == len(frames)
    assert np.allclose([f.image[:, W // 2 + 4:].mean() for f in frames], [_grey(k) for k in range(len(frames))],
                       atol=4)


def test_zero_frame_video_is_a_data_error(video, tmp_path):
    data = video.read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(data[: data.find(b"mdat") + 4])  # header and index, no sample data
    with pytest.raises(DataError, match="empty.mp4.*no decodable frame"):
        open_source(empty)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 10])
def test_unreadable_file_is_a_data_error(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.mp4"):
        open_source(bad)


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere.mp4: no such file"):
        open_source(tmp_path / "nowhere.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty.*no images"):
        open_source(tmp_path / "empty")


def _mot_sequence(root: Path, name: str, frames: int, fps: float) -> Path:
    seq = root / name
    (seq / "img1").mkdir(parents=True)
    for k in range(frames):
        Image.fromarray(np.full((H, W, 3), 20 * k, np.uint8)).save(seq / "img1" / f"{k + 1:06d}.png")
    write_seqinfo(seq / "seqinfo.ini", SeqInfo(name=name, fps=fps, length=frames, width=W, height=H, im_ext=".png"))
    return seq


def test_mot_sequence_folder(tmp_path):
    seq = _mot_sequence(tmp_path, "CAM-A", 4, 5.0)
    assert read_seqinfo(seq / "seqinfo.ini") == SeqInfo("CAM-A", 5.0, 4, W, H, "img1", ".png")
    for spec in (seq, seq / "img1"):  # the sequence folder or its img1/: both are camera CAM-A at 5 fps
        source = open_source(spec)
        assert (source.camera, source.fps, source.size, source.num_frames) == ("CAM-A", 5.0, (W, H), 4)
        frames = list(source)
        assert [f.index for f in frames] == [0, 1, 2, 3]
        assert [f.time for f in frames] == [0.0, 0.2, 0.4, 0.6]
        assert [int(f.image[0, 0, 0]) for f in frames] == [0, 20, 40, 60]


def test_plain_folder_and_missing_frame_keep_file_numbers(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for number in (1, 2, 4):  # frame 3 missing: frame indices follow the file numbers
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / f"{number:06d}.jpg")
    frames = list(open_source(folder, fps=2))
    assert [f.index for f in frames] == [0, 1, 3] and [f.time for f in frames] == [0.0, 0.5, 1.5]


def test_unreadable_frame_is_skipped_with_a_warning(tmp_path):
    seq = _mot_sequence(tmp_path, "S", 3, 10.0)
    (seq / "img1" / "000002.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="000002.png"), pytest.warns(UserWarning, match="1 unreadable"):
        frames = list(open_source(seq))
    assert [f.index for f in frames] == [0, 2]


def test_interleave_merges_cameras_by_time_at_their_own_rates(tmp_path):
    fast, slow = _mot_sequence(tmp_path, "fast", 5, 10.0), _mot_sequence(tmp_path, "slow", 2, 4.0)
    order = [(k, f.index) for k, f in interleave([open_source(fast), open_source(slow)])]
    # times: fast 0, .1, .2, .3, .4; slow 0, .25
    assert order == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (0, 3), (0, 4)]


@pytest.mark.shared
def test_raw_h264_elementary_stream():
    video = SHARED / "videos" / "people-detection.264"
    if not video.is_file():
        pytest.skip("../shared videos not present")
    with open_source(video) as source:
        assert source.camera == "people-detection" and source.size == (768, 432)
        first = next(iter(source))
    assert first.index == 0 and first.time == 0.0 and first.image.shape == (432, 768, 3)


# ---------------------------------------------------------------------------------------------------------------
# MOTChallenge files.
# ---------------------------------------------------------------------------------------------------------------

def test_read_tracks_and_write_them_back(tmp_path):
    path = tmp_path / "tracks.txt"
    path.write_text("2,7,10.5,20,30,60,0.9,-1,-1,-1\n1,3,1,2,3,4,0.5,-1,-1,-1\n\n1,1,5,6,7,8,1,-1,-1,-1\n")
    table = read_mot(path)
    assert table.frames.tolist() == [1, 1, 2] and table.ids.tolist() == [1, 3, 7]
    assert table.boxes.tolist() == [[5, 6, 7, 8], [1, 2, 3, 4], [10.5, 20, 30, 60]]
    assert table.xyxy[2].tolist() == [10.5, 20, 40.5, 80] and table.scores.tolist() == [1, 0.5, 0.9]
    out = tmp_path / "out" / "tracks.txt"
    write_mot(out, table)
    assert out.read_text().splitlines() == ["1,1,5.00,6.00,7.00,8.00,1.0000,-1,-1,-1",
                                            "1,3,1.00,2.00,3.00,4.00,0.5000,-1,-1,-1",
                                            "2,7,10.50,20.00,30.00,60.00,0.9000,-1,-1,-1"]


def test_mot17_ground_truth_keeps_considered_pedestrians(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,0,0,10,20,1,1,0.5\n"    # pedestrian
                    "1,2,0,0,10,20,0,1,1.0\n"    # not considered
                    "1,3,0,0,10,20,1,7,1.0\n"    # static person (class 7)
                    "2,1,1,1,10,20,1,1,1.0\n")
    gt = read_gt(path)
    assert gt.frames.tolist() == [1, 2] and gt.ids.tolist() == [1, 1] and gt.visibility.tolist() == [0.5, 1.0]
    assert len(read_gt(path, people_only=False)) == 4
    mot15 = tmp_path / "gt15.txt"
    mot15.write_text("1,1,399,182,121,229,1,-1,-1,-1\n1,2,1,1,1,1,0,-1,-1,-1\n")
    assert read_gt(mot15).ids.tolist() == [1]


def test_gt_written_with_visibility_reads_back(tmp_path):
    table = MotTable([1, 2], [4, 4], [[1, 2, 3, 4], [2, 3, 4, 5]], [1, 1], [1.0, 0.25])
    write_mot(tmp_path / "gt.txt", table, gt=True)
    assert (tmp_path / "gt.txt").read_text() == "1,4,1.00,2.00,3.00,4.00,1,1,1.000\n2,4,2.00,3.00,4.00,5.00,1,1,0.250\n"
    assert read_gt(tmp_path / "gt.txt").visibility.tolist() == [1.0, 0.25]


@pytest.mark.parametrize("line, reason", [
    ("1,2,3", "at least 6 columns"),
    ("1,2,x,4,5,6", "not a number"),
    ("0,1,1,1,1,1,1,-1,-1,-1", "frame must be an integer >= 1"),
    ("1,1,1,1,-5,1,1,-1,-1,-1", "negative box"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "tracks.txt"
    path.write_text("1,1,1,1,1,1,1,-1,-1,-1\n" + line + "\n")
    with pytest.raises(DataError, match=rf"tracks.txt, line 2: .*{reason}"):
        read_mot(path)


def test_missing_mot_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        read_mot(tmp_path / "nope.txt")


def test_mot_writer_streams_and_keeps_rows_after_an_interruption(tmp_path):
    path = tmp_path / "cam" / "tracks.txt"
    with pytest.raises(KeyboardInterrupt), MotWriter(path) as writer:
        writer.add(MotTable([1], [5], [[1, 2, 3, 4]], [0.5]))
        assert not path.exists()  # rows go to a hidden partial file until the run ends
        raise KeyboardInterrupt
    assert read_mot(path).ids.tolist() == [5]
    assert [p.name for p in path.parent.iterdir()] == ["tracks.txt"]


def test_no_warning_for_a_clean_video(video):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(1 for _ in open_source(video)) == N


def _serve(handler_body) -> tuple:
    """A local HTTP server whose GET runs handler_body(handler); returns (server, url)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            handler_body(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/lobby.ts"


@pytest.fixture(scope="module")
def transport_stream(tmp_path_factory) -> bytes:
    """40 frames as MPEG-TS, a streamable container (what a live HTTP camera sends)."""
    import av

    path = tmp_path_factory.mktemp("ts") / "live.ts"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for k in range(40):
            img = np.full((H, W, 3), 5 * k, np.uint8)
            img[:, : W // 2] = rng.integers(0, 256, (H, W // 2, 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_live_stream_that_disappears_ends_with_a_warning_naming_it(transport_stream):
    def half_then_hang_up(handler):
        handler.wfile.write(transport_stream[: len(transport_stream) // 2])
        handler.close_connection = True

    server, url = _serve(half_then_hang_up)
    try:
        with open_source(url) as source:
            assert source.is_live and source.num_frames is None and source.camera.endswith("lobby")
            with pytest.warns(UserWarning, match=rf"live source {url}: stopped delivering frames at frame \d+"):
                frames = list(source)
    finally:
        server.shutdown()
    assert 0 < len(frames) < 40
    assert [f.index for f in frames] == list(range(len(frames)))


def test_live_stream_that_goes_silent_times_out(transport_stream, monkeypatch):
    import threading

    from reidkit.video import sources

    monkeypatch.setattr(sources, "LIVE_TIMEOUT", 1.0)
    release = threading.Event()

    def stall(handler):
        handler.wfile.write(transport_stream[: len(transport_stream) // 2])
        handler.wfile.flush()
        release.wait(10)  # connection open, nothing more sent

    server, url = _serve(stall)
    try:
        with pytest.warns(UserWarning, match=rf"live source {url}: stopped delivering frames"):
            frames = list(open_source(url))
        assert len(frames) > 0
    finally:
        release.set()
        server.shutdown()


def test_synthetic_source_streams_what_synth_video_writes(tmp_path):
    from reidkit.data.synth_video import SynthVideoConfig, generate_synth_video
    from reidkit.video.sources import SyntheticSource

    cfg = SynthVideoConfig(cameras=2, people=4, seconds=5.0, fps=2.0, width=96, height=64, jpeg_quality=100)
    source = SyntheticSource(cfg, camera=1, keep_ground_truth=True)
    assert (source.camera, source.num_frames, source.size, source.fps) == ("cam2", 10, (96, 64), 2.0)
    frames = list(source)
    written = generate_synth_video(tmp_path / "site", cfg, show_progress=False)
    on_disk = list(open_source(written / "cam2"))
    assert [f.index for f in frames] == [f.index for f in on_disk] == list(range(10))
    assert all(np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 2 for a, b in zip(frames, on_disk))
    rows = sum(len(t) for t in source.ground_truth)
    assert rows == len(read_gt(written / "cam2" / "gt" / "gt.txt"))
