"""Person detectors: post-processing against hand values, the vendored detector on real frames (../shared), public
detections served per frame, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidkit.errors import ConfigError, ModelError
from reidkit.video.detect import box_iou, build_detector, default_model_path, postprocess

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TUD = SHARED / "datasets" / "mot" / "TUD-Campus"
MARKET = SHARED / "datasets" / "market1501-frames"


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert np.allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0]])


def test_postprocess_threshold_nms_min_height_and_clipping():
    dets = np.array([[0, 0, 10, 40, 0.9],     # kept
                     [1, 0, 11, 40, 0.8],     # IoU 0.82 with the first: suppressed
                     [50, 0, 60, 40, 0.3],    # below threshold
                     [70, 0, 80, 5, 0.95],    # 5 px high: below min_height
                     [-5, 10, 20, 200, 0.6]])  # clipped to the 100x100 image
    out = postprocess(dets, (100, 100), threshold=0.5, nms_iou=0.5, min_height=10)
    assert out.dtype == np.float32
    assert out.tolist() == [[0, 0, 10, 40, pytest.approx(0.9)], [0, 10, 20, 100, pytest.approx(0.6)]]


def test_vendored_model_is_package_data():
    xml = default_model_path()
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert (xml.parent / "LICENSE.txt").is_file()


def test_default_detector_contract_on_a_blank_image():
    detector = build_detector("default", threads=1)
    out = detector.detect([np.zeros((120, 200, 3), np.uint8), np.full((60, 80, 3), 128, np.uint8)])
    assert len(out) == 2 and all(o.dtype == np.float32 and o.shape[1:] == (5,) for o in out)


def test_unknown_detector_and_bad_options():
    with pytest.raises(ModelError, match="'yolo-nope'.*not a known name"):
        build_detector("yolo-nope")
    with pytest.raises(ConfigError, match="threshold"):
        build_detector("hog", threshold=1.5)


def test_onnx_graph_with_unexpected_outputs_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])
    out = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["data"], ["pooled"])], "g", [inp], [out])
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    detector = build_detector(path)
    with pytest.raises(ModelError, match=r"classifier.onnx: outputs not understood \(shapes \(1, 3, 1, 1\)\)"):
        detector.detect([np.zeros((32, 32, 3), np.uint8)])


def test_public_detections_served_per_frame(tmp_path):
    det = tmp_path / "det" / "det.txt"
    det.parent.mkdir()
    det.write_text("1,-1,10,10,20,40,50,-1,-1,-1\n3,-1,0,0,10,30,100,-1,-1,-1\n3,-1,1,0,10,30,25,-1,-1,-1\n")
    detector = build_detector(tmp_path)  # a sequence folder with det/det.txt
    images = [np.zeros((100, 100, 3), np.uint8)] * 3
    out = detector.detect(images, frame_indices=[0, 1, 2])
    assert out[0].tolist() == [[10, 10, 30, 50, 0.5]] and out[1].shape == (0, 5)
    assert out[2].tolist() == [[0, 0, 10, 30, 1.0], [1, 0, 11, 30, 0.25]]  # scores / the file's max (100)
    with pytest.raises(ConfigError, match="looked up by frame"):
        detector.detect(images)


@pytest.mark.shared
def test_default_detector_finds_the_people_of_tud_campus_frame_1():
    if not TUD.is_dir():
        pytest.skip("../shared TUD-Campus not present")
    from reidkit.data.mot import read_gt
    from reidkit.video.sources import open_source

    frame = next(iter(open_source(TUD)))
    gt = read_gt(TUD / "gt" / "gt.txt").at(1)
    boxes = build_detector("default", threads=1).detect_frames([frame])[0]
    matched = (box_iou(gt.xyxy, boxes[:, :4]).max(axis=1) >= 0.5).sum()
    assert matched >= len(gt) / 2, f"{matched} of {len(gt)} ground-truth people found"


@pytest.mark.shared
def test_default_detector_finds_the_market_query_where_it_was_cut():
    frame_path, query_path = MARKET / "frames" / "c1s1_001051.jpg", MARKET / "query" / "0001_c1s1_001051_00.jpg"
    if not frame_path.is_file() or not query_path.is_file():
        pytest.skip("../shared Market-1501 frames not present")
    import cv2

    from reidkit.data.images import read_image

    frame, query = np.asarray(read_image(frame_path)), np.asarray(read_image(query_path))
    # Independent reference: the query crop (64x128, resized from the frame) located by template matching over
    # a range of crop heights, on the frame at quarter resolution (16x faster; boxes scaled back).
    small = cv2.resize(frame, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    best = (-1.0, None)
    for height in range(36, 110, 2):
        template = cv2.resize(query, (height // 2, height), interpolation=cv2.INTER_AREA)
        _, score, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(small, template, cv2.TM_CCOEFF_NORMED))
        if score > best[0]:
            best = (score, [4 * x, 4 * y, 4 * (x + height // 2), 4 * (y + height)])
    assert best[0] > 0.5, f"template matching found no clear location (score {best[0]:.2f})"
    boxes = build_detector("default", threads=1, threshold=0.3).detect([frame])[0]
    assert box_iou(np.array([best[1]]), boxes[:, :4]).max() >= 0.5


def _constant_onnx(path: Path, outputs: dict[str, np.ndarray]) -> None:
    """An ONNX graph with a 1x3x32x32 image input whose outputs are constants (a stand-in detector)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
             for name, value in outputs.items()]
    # The image feeds an Identity so the input is part of the graph.
    nodes.append(helper.make_node("Identity", ["data"], ["echo"]))
    infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
             for n, v in outputs.items()]
    infos.append(helper.make_tensor_value_info("echo", TensorProto.FLOAT, [1, 3, 32, 32]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
                              infos)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_onnx_ssd_detection_output_rows_become_pixel_boxes(tmp_path):
    rows = np.array([[[[0, 1, 0.9, 0.1, 0.2, 0.5, 0.8],      # kept: normalised -> pixels of a 200x100 image
                       [0, 1, 0.3, 0.0, 0.0, 0.2, 0.2],      # below the 0.5 threshold
                       [-1, 0, 0, 0, 0, 0, 0]]]], np.float32)  # padding row
    _constant_onnx(tmp_path / "ssd.onnx", {"detection_out": rows})
    out = build_detector(tmp_path / "ssd.onnx").detect([np.zeros((100, 200, 3), np.uint8)])[0]
    assert out.tolist() == [[20, 20, 100, 80, pytest.approx(0.9)]]


def test_onnx_boxes_scores_outputs(tmp_path):
    boxes = np.array([[10, 10, 50, 90], [12, 10, 52, 90], [0, 0, 5, 5]], np.float32)  # pixels
    scores = np.array([0.8, 0.7, 0.9], np.float32)
    _constant_onnx(tmp_path / "det.onnx", {"boxes": boxes, "scores": scores})
    out = build_detector(tmp_path / "det.onnx", min_height=10).detect([np.zeros((100, 200, 3), np.uint8)])[0]
    assert out.tolist() == [[10, 10, 50, 90, pytest.approx(0.8)]]  # second suppressed by NMS, third too small


def test_default_detector_runs_in_f32_on_every_host():
    # OpenVINO would pick bf16 by itself on CPUs that have it, and bf16 moves the detections (docs/video.md);
    # the reference is the runtime's own report of the compiled network's precision
    from reidkit.video.detect import OpenVINODetector

    detector = OpenVINODetector(default_model_path())
    assert str(detector._network(1).get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_detector_precision_is_checked():
    from reidkit.video.detect import OpenVINODetector

    with pytest.raises(ModelError, match="precision='fp8'"):
        OpenVINODetector(default_model_path(), precision="fp8")
