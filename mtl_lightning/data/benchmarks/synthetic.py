"""Synthetic copies of the benchmarks, written in each reader's exact on-disk layout.

Random content of the real shapes, dtypes and file formats: the tests read them (nothing
can be downloaded there), and ``benchmarks/protocol_timing.py`` writes full-size copies with
the real sample counts to time a protocol's steps before the real data is at hand. Nothing
here is meant to be learnable.

Each writer takes the root folder, the number of samples per split and the image size
(height, width), and returns the root.
"""

from __future__ import annotations

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


__all__ = ["REAL_SHAPES", "write_mtan", "write_nyud", "write_split_file"]
