"""Label values the data pipeline and the tasks' losses and metrics must agree on."""

IGNORE_INDEX = 255
"""Semantic-mask value of pixels without a label (crowds, objects without a mask, void);
the segmentation and edge losses and metrics skip it."""

__all__ = ["IGNORE_INDEX"]
