"""Values every part of the data pipeline must agree on, defined once."""

IGNORE_INDEX = 255
"""Semantic-mask value of pixels without a label (crowds, objects without a mask, void);
the segmentation loss and metrics skip it."""

__all__ = ["IGNORE_INDEX"]
