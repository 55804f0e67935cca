"""Synthetic copies of the benchmarks, written in each reader's exact on-disk layout.

Random content of the real shapes, dtypes and file formats: the tests read them (nothing
can be downloaded there), and ``benchmarks/protocol_timing.py`` writes full-size copies with
the real sample counts to time a protocol's steps before the real data is at hand. Nothing
here is meant to be learnable.

Each writer takes the root folder, the number of samples per split and the image size
(height, width), and returns the root.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: (height, width) and (train, val) counts of the real data sets
REAL_SHAPES = {
    "nyuv2": ((288, 384), {"train": 795, "val": 654}),
    "cityscapes": ((128, 256), {"train": 2975, "val": 500}),
    "nyud": ((425, 560), {"train": 795, "val": 654}),
    "pascal_context": ((375, 500), {"train": 4998, "val": 5105}),
    "bdd100k": ((720, 1280), {"train": 70000, "val": 10000}),
}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _jpg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def _blocks(rng: np.random.Generator, size: tuple[int, int], values: int,
            block: int = 16) -> np.ndarray:
    """A label map of ``block``-pixel squares of random values in ``0..values-1`` (so
    boundaries exist and nearest-neighbour resizing keeps every value)."""
    rows, cols = -(-size[0] // block), -(-size[1] // block)
    grid = rng.integers(0, values, (rows, cols))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[: size[0], : size[1]]


def _normals_png(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Unit normals facing the camera, encoded as (n + 1) / 2 * 255 (one grey, unlabelled
    block row at the bottom)."""
    normals = rng.normal(size=(*size, 3)).astype(np.float32)
    normals[..., 2] = np.abs(normals[..., 2]) + 1.0
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    encoded = np.round((normals + 1.0) / 2.0 * 255.0).astype(np.uint8)
    encoded[-4:] = 128  # decodes to a near-zero vector: no ground truth
    return encoded


def write_split_file(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n", encoding="utf-8")


def write_nyud(root: Path, counts: dict[str, int], size: tuple[int, int] = (425, 560),
               seed: int = 0) -> Path:
    """NYUD-v2 in the ATRC layout (``images``, ``segmentation``, ``depth``, ``normals``,
    ``edge``, ``gt_sets``)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    start = 0
    for split, count in counts.items():
        ids = [f"{i:04d}" for i in range(start, start + count)]
        start += count
        write_split_file(root / "gt_sets" / f"{split}.txt", ids)
        for sample_id in ids:
            _png(root / "images" / f"{sample_id}.png",
                 rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            labels = _blocks(rng, size, 41).astype(np.uint8)  # 0 = unlabelled, 1..40
            _png(root / "segmentation" / f"{sample_id}.png", labels)
            depth = rng.uniform(0.5, 10.0, size).astype(np.float32)
            depth[:4] = 0  # no ground truth in the top rows
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{sample_id}.npy", depth)
            _png(root / "normals" / f"{sample_id}.png", _normals_png(rng, size))
            edges = np.zeros(size, dtype=np.uint8)
            edges[:, 1:][labels[:, 1:] != labels[:, :-1]] = 255
            _png(root / "edge" / f"{sample_id}.png", edges)
    return root


def _person_parts_mat(path: Path, rng: np.random.Generator, size: tuple[int, int],
                      with_person: bool) -> None:
    """A PASCAL-Part ``anno`` struct: one person (class 15) with a head and a torso part and
    one other object (class 7), or the other object only."""
    from scipy.io import savemat

    part_type = [("part_name", "O"), ("mask", "O")]
    object_type = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    height, width = size
    objects = []
    if with_person:
        head = np.zeros(size, dtype=np.uint8)
        head[: height // 4, : width // 2] = 1
        torso = np.zeros(size, dtype=np.uint8)
        torso[height // 4: height // 2, : width // 2] = 1
        parts = np.array([("head", head), ("torso", torso)], dtype=part_type)[None]
        objects.append(("person", 15, head | torso, parts))
    car = np.zeros(size, dtype=np.uint8)
    car[height // 2:, width // 2:] = 1
    objects.append(("car", 7, car, np.zeros((0, 0))))
    anno = np.array([("sample", np.array(objects, dtype=object_type)[None])],
                    dtype=[("imname", "O"), ("objects", "O")])
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"anno": anno})


def write_pascal_context(root: Path, counts: dict[str, int], size: tuple[int, int] = (375, 500),
                         seed: int = 0) -> Path:
    """PASCAL-Context in ASTMT's five-task layout; every other image has a person with parts."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root = Path(root)
    start = 0
    for split, count in counts.items():
        ids = [f"2008_{i:06d}" for i in range(start, start + count)]
        start += count
        write_split_file(root / "ImageSets" / "Context" / f"{split}.txt", ids)
        for index, sample_id in enumerate(ids):
            _jpg(root / "JPEGImages" / f"{sample_id}.jpg", rng, size)
            semseg = _blocks(rng, size, 21).astype(np.uint8)
            semseg[:2] = 255  # ignore
            _png(root / "semseg" / "pascal-context" / f"{sample_id}.png", semseg)
            _person_parts_mat(root / "human_parts" / f"{sample_id}.mat", rng, size,
                              with_person=index % 2 == 0)
            _png(root / "sal_distill" / f"{sample_id}.png",
                 rng.integers(0, 256, size, dtype=np.uint8))
            _png(root / "normals_distill" / f"{sample_id}.png", _normals_png(rng, size))
            label_map = _blocks(rng, size, 459).astype(np.uint16) + 1
            (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
            savemat(root / "pascal-context" / "trainval" / f"{sample_id}.mat",
                    {"LabelMap": label_map})
    return root


BDD_CATEGORIES = ("car", "bus", "truck", "person", "traffic sign")


def write_bdd100k(root: Path, counts: dict[str, int], size: tuple[int, int] = (720, 1280),
                  objects: int = 8, seed: int = 0) -> Path:
    """BDD100K in YOLOP's layout: frames, per-frame JSON labels with ``box2d`` objects (and a
    lane polygon without one), drivable-area and lane-line masks (0 / 255)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    height, width = size
    start = 0
    for split, count in counts.items():
        for folder in ("det_annotations", "da_seg_annotations", "ll_seg_annotations"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for index in range(start, start + count):
            name = f"b{index:07d}-{index:08x}"
            _jpg(root / "images" / split / f"{name}.jpg", rng, size)
            boxes = []
            for number in range(objects):
                x1, y1 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
                w, h = rng.uniform(8, width * 0.2), rng.uniform(8, height * 0.2)
                boxes.append({"category": BDD_CATEGORIES[number % len(BDD_CATEGORIES)],
                              "id": number, "attributes": {"occluded": False},
                              "box2d": {"x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h}})
            boxes.append({"category": "lane/single white", "id": objects,
                          "poly2d": [[0, height, "L"], [width / 2, height / 2, "L"]]})
            label = {"name": name, "frames": [{"timestamp": 10000, "objects": boxes}],
                     "attributes": {"weather": "clear"}}
            (root / "det_annotations" / split / f"{name}.json").write_text(json.dumps(label))
            drivable = np.zeros(size, dtype=np.uint8)
            drivable[height // 2:, width // 4: 3 * width // 4] = 255
            _png(root / "da_seg_annotations" / split / f"{name}.png", drivable)
            lanes = np.zeros(size, dtype=np.uint8)
            lanes[height // 2:, width // 4: width // 4 + max(2, width // 200)] = 255
            _png(root / "ll_seg_annotations" / split / f"{name}.png", lanes)
        start += count
    return root


def write_mtan(root: Path, counts: dict[str, int], size: tuple[int, int],
               folders: tuple[str, ...] = ("label", "depth", "normal"), classes: int = 13,
               seed: int = 0) -> Path:
    """NYUv2 / Cityscapes in the MTAN layout (``{split}/{image,label*,depth,normal}/<i>.npy``)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in counts.items():
        for folder in ("image", *folders):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy", rng.random((*size, 3), dtype=np.float32))
            for folder in folders:
                if folder.startswith("label"):
                    label = _blocks(rng, size, classes + 1).astype(np.float32) - 1.0  # -1 ignore
                    np.save(root / split / folder / f"{i}.npy", label)
                elif folder == "depth":
                    depth = rng.uniform(0.5, 8.0, (*size, 1)).astype(np.float32)
                    depth[:4] = 0
                    np.save(root / split / folder / f"{i}.npy", depth)
                else:
                    normal = rng.normal(size=(*size, 3)).astype(np.float32)
                    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                    normal[-3:] = 0
                    np.save(root / split / folder / f"{i}.npy", normal)
    return root


__all__ = ["REAL_SHAPES", "write_bdd100k", "write_mtan", "write_nyud",
           "write_pascal_context", "write_split_file"]
