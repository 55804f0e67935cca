"""COCO masks are checked before pycocotools rasterises them (``data/coco/masks.py``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mtl_lightning.data.coco import masks

HEIGHT, WIDTH = 30, 40


def _compressed(binary: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))["counts"].decode()


@pytest.fixture
def square() -> np.ndarray:
    binary = np.zeros((HEIGHT, WIDTH), dtype=bool)
    binary[5:15, 10:30] = True
    return binary


def test_good_rles_pass_and_decode_to_the_mask(square: np.ndarray) -> None:
    compressed = {"size": [HEIGHT, WIDTH], "counts": _compressed(square)}
    uncompressed = {"size": [HEIGHT, WIDTH], "counts": _runs(square)}
    for rle in (compressed, uncompressed):
        assert masks.rle_problem(rle, HEIGHT, WIDTH) is None
        assert np.array_equal(masks.decode(rle, HEIGHT, WIDTH), square)
    assert masks.mask_box(compressed, HEIGHT, WIDTH) == [10.0, 5.0, 20.0, 10.0]


def _runs(binary: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros (COCO's uncompressed counts)."""
    flat = binary.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def test_encode_writes_coco_json_rle_that_decodes_back(square: np.ndarray) -> None:
    rle = masks.encode(square)
    assert rle == {"size": [HEIGHT, WIDTH], "counts": _compressed(square)}
    assert masks.rle_problem(rle, HEIGHT, WIDTH) is None
    assert (masks.decode(rle, HEIGHT, WIDTH) == square).all()
    assert masks.mask_box(rle, HEIGHT, WIDTH) == [10.0, 5.0, 20.0, 10.0]  # x, y, w, h


@pytest.mark.parametrize(("counts", "kind", "reason"), [
    ("PQ1", "counts", r"sum to \d+, not height\*width = 1200"),  # short: garbage on decode
    ("ooooooooooooooooo0", "counts", r"do not decode \(.*varint"),  # overflows 64 bits
    ("not an RLE!", "counts", r"outside COCO's RLE alphabet"),
    ("a\x00b", "counts", r"outside COCO's RLE alphabet"),  # pycocotools stops at NUL
    ([1300, -100], "counts", r"negative run lengths"),  # sums to h*w, wraps in uint32
    ([600, 599], "counts", r"sum to 1199"),
    ([1.5, 1198.5], "malformed", r"neither a list of integers"),
])
def test_bad_counts_are_named(counts: object, kind: str, reason: str) -> None:
    problem = masks.rle_problem({"size": [HEIGHT, WIDTH], "counts": counts}, HEIGHT, WIDTH)
    assert problem is not None and problem.kind == kind
    assert re.search(reason, problem.reason), problem


def test_overflowing_compressed_counts_are_refused(square: np.ndarray) -> None:
    counts = _compressed(square) + "k45"  # runs past height*width
    problem = masks.rle_problem({"size": [HEIGHT, WIDTH], "counts": counts}, HEIGHT, WIDTH)
    assert problem is not None and problem.kind == "counts"


def test_size_must_be_the_image_size(square: np.ndarray) -> None:
    rle = {"size": [HEIGHT, WIDTH], "counts": _compressed(square)}
    problem = masks.rle_problem(rle, HEIGHT + 1, WIDTH)
    assert problem is not None and problem.kind == "size"
    problem = masks.rle_problem({"size": "30x40", "counts": rle["counts"]}, HEIGHT, WIDTH)
    assert problem is not None and problem.kind == "malformed"


def test_polygon_reach_allows_a_margin_and_names_the_farthest_point() -> None:
    inside = [5, 5, 15, 5, 15, 15]
    slightly_outside = [-70, -50, 110, 5, 15, 80]  # within 2 image sizes of a 40x30 image
    assert masks.polygon_reach(inside, HEIGHT, WIDTH) is None
    assert masks.polygon_reach(slightly_outside, HEIGHT, WIDTH) is None
    assert masks.polygon_reach([5, 5, 4e8, 5, 15, -2e7], HEIGHT, WIDTH) == 4e8
    assert masks.polygon_reach([5, -91, 15, 5, 15, 15], HEIGHT, WIDTH) == -91


def test_polygon_points() -> None:
    assert masks.polygon_points_ok([1, 2, 3, 4, 5, 6])
    assert not masks.polygon_points_ok([1, 2, 3, 4])  # two points
    assert not masks.polygon_points_ok([1, 2, 3, 4, 5, 6, 7])  # odd
    assert not masks.polygon_points_ok([1, 2, 3, 4, 5, float("nan")])
    assert not masks.polygon_points_ok([1, 2, 3, 4, 5, "6"])
