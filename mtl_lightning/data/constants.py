"""Values every part of the data pipeline must agree on, defined once."""

IGNORE_INDEX = 255
"""Semantic-mask value of pixels without a label (crowds, objects without a mask, void);
the segmentation loss and metrics skip it."""

COCO_TASK_NAMES = ("classification", "segmentation", "detection")
"""The task types a COCO file can label (image labels, masks, boxes), in this order. The COCO
reader and its validation both need it; defined here so neither imports the other."""

__all__ = ["COCO_TASK_NAMES", "IGNORE_INDEX"]
