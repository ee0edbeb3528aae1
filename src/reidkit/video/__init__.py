"""Video: frame sources (files, frame folders, live streams), person detectors, the single-camera tracker,
cross-camera association into global identities, the `track` pipeline and its outputs, and `find` over tracklets."""
