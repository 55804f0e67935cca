"""Values every part of the data pipeline must agree on, defined once.

``IGNORE_INDEX`` is defined in :mod:`mtl_lightning.shared.constants` (the tasks' losses
read it too) and re-exported here for the readers.
"""

from mtl_lightning.shared.constants import IGNORE_INDEX

COCO_TASK_NAMES = ("classification", "segmentation", "detection")
"""The task types a COCO file can label (image labels, masks, boxes), in this order. The COCO
reader and its validation both need it; defined here so neither imports the other."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The labelled splits a data set can have, in this order (``predict`` reads a folder)."""

__all__ = ["COCO_TASK_NAMES", "IGNORE_INDEX", "SPLITS"]
