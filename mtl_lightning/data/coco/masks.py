"""COCO instance masks (polygons, uncompressed and compressed RLE): checked, then rasterised.

The COCO API trusts what it is given. A compressed RLE whose counts sum to less than
height*width decodes to uninitialised memory (a different mask each time); one that overflows,
or a garbage string, raises "Invalid RLE mask representation" naming no file or annotation;
a polygon with coordinates far outside the image makes ``frPyObjects`` rasterise a line of
billions of points (gigabytes of memory, or a crash). So every mask is checked here before
pycocotools sees it, and each check answers with the reason in words (the caller names the
file and the annotation):

- a polygon is at least 3 points, an even number of finite numbers, every coordinate within
  ``POLYGON_MARGIN`` image sizes of the image (a point a little outside is normal and is
  clipped by the rasteriser; one thousands of image sizes away is an error in the file);
- an RLE has ``size`` [height, width] and ``counts``: a list of non-negative integers, or a
  string of COCO's RLE alphabet (characters ``0`` to ``o``) that decodes; the runs must sum to
  exactly height*width. The string is decoded by faster-coco-eval's parser, which reports
  malformed input instead of reading past it.

Checked masks are then merged, decoded and boxed by pycocotools (:func:`to_rle`,
:func:`decode`, :func:`mask_box`): the one place the package turns a COCO segmentation into
pixels.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, NamedTuple

import numpy as np

# faster-coco-eval's compiled mask API: its string parser reports malformed input (pycocotools'
# reads past it); the package's own tests import it by this name.
from faster_coco_eval import mask_api_new_cpp as checked_rle
from pycocotools import mask as mask_utils

POLYGON_MARGIN = 2
"""How many image sizes a polygon coordinate may lie outside the image (x in [-2W, 3W])."""

_RLE_ALPHABET = re.compile(r"[0-o]*")  # COCO's compressed counts: 6-bit values + 48


class RleProblem(NamedTuple):
    """Why an RLE cannot be used: ``kind`` is ``malformed`` (no usable size or counts),
    ``size`` (not the image's size) or ``counts`` (the runs do not decode to the size)."""

    kind: Literal["malformed", "size", "counts"]
    reason: str


def polygon_points_ok(polygon: Any) -> bool:
    """Whether ``polygon`` is a flat list of at least 3 points of finite numbers."""
    return (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
            and set(map(type, polygon)) <= {int, float} and math.isfinite(math.fsum(polygon)))


def polygon_reach(polygon: list[float], height: int, width: int) -> float | None:
    """The coordinate farthest outside the margin (see ``POLYGON_MARGIN``), ``None`` if none.

    Call it on a polygon that passed :func:`polygon_points_ok`.
    """
    xs, ys = polygon[0::2], polygon[1::2]
    outside = [v for values, side in ((xs, width), (ys, height))
               if min(values) < -POLYGON_MARGIN * side
               or max(values) > (POLYGON_MARGIN + 1) * side
               for v in values
               if v < -POLYGON_MARGIN * side or v > (POLYGON_MARGIN + 1) * side]
    return float(max(outside, key=abs)) if outside else None


def rle_problem(rle: dict, height: int, width: int) -> RleProblem | None:
    """Why the RLE ``rle`` cannot be decoded as a ``height`` x ``width`` mask, or ``None``.

    The reason completes "annotation 7 (image 3) has an RLE mask ...": for example "whose
    counts sum to 1000, not height*width = 1200".
    """
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return RleProblem("malformed", f"whose 'size' is {size!r}, not [height, width]")
    if list(size) != [height, width]:
        return RleProblem("size", f"of size {size} but the image is {[height, width]} "
                          "(height, width)")
    return _counts_problem(counts, height, width)


def _counts_problem(counts: Any, height: int, width: int) -> RleProblem | None:
    """Whether ``counts`` (compressed or not) are runs that fill exactly the mask."""
    size = [height, width]
    if isinstance(counts, bytes):
        counts = counts.decode("latin-1")
    if isinstance(counts, str):
        if not _RLE_ALPHABET.fullmatch(counts):
            return RleProblem("counts", "whose compressed 'counts' hold characters outside "
                              "COCO's RLE alphabet ('0' to 'o'), so it is not a COCO RLE "
                              "string")
        try:
            runs = checked_rle.toUncompressedRLE([{"size": size, "counts": counts}])[0]["counts"]
        except (RuntimeError, ValueError, OverflowError) as error:
            reason = str(error).strip().rstrip(".") or type(error).__name__
            return RleProblem("counts", f"whose compressed 'counts' do not decode ({reason})")
    elif isinstance(counts, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in counts):
        if any(v < 0 for v in counts):
            return RleProblem("counts", "with negative run lengths in 'counts'")
        runs = counts
    else:
        return RleProblem("malformed", "whose 'counts' are neither a list of integers nor a "
                          "compressed COCO string")
    total = int(sum(runs))
    if total != height * width:
        return RleProblem("counts", f"whose counts sum to {total}, not height*width = "
                          f"{height * width}")
    return None


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A checked segmentation (polygons, uncompressed or compressed RLE) as one pycocotools
    RLE; several polygons of one object are merged."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def encode(mask: np.ndarray) -> dict:
    """A ``[H, W]`` mask (bool or 0/1) as COCO JSON's compressed RLE: ``size`` and the
    ``counts`` string (pycocotools ``encode``)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A checked segmentation as a bool [height, width] array."""
    return mask_utils.decode(to_rle(segmentation, height, width)).astype(bool)


def mask_box(segmentation: Any, height: int, width: int) -> list[float] | None:
    """The mask's [x, y, w, h] (pycocotools ``toBbox``), ``None`` for an empty mask."""
    box = [float(v) for v in mask_utils.toBbox(to_rle(segmentation, height, width))]
    return box if box[2] > 0 and box[3] > 0 else None


__all__ = ["POLYGON_MARGIN", "RleProblem", "decode", "encode", "mask_box", "polygon_points_ok",
           "polygon_reach", "rle_problem", "to_rle"]
