"""Hand-crafted features and learned metrics of the pre-deep re-id literature (LOMO, XQDA)."""
