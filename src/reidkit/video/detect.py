"""Person detectors.

Interface (stable; the pipeline is written against it): a detector has `detect(images: list[np.ndarray]) ->
list[np.ndarray]`, one float32 array (N, 5) per RGB uint8 image: x1, y1, x2, y2 in pixels, then the score in [0, 1].
`build_detector(name_or_path, ...)` returns one.
"""
