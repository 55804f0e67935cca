"""The procedural "Scenes" benchmark: a small multi-task dataset written to disk in COCO format.

Every image is an RGB scene of coloured shapes on a textured background, labelled for three
tasks at once:

* **detection** - one box and one class per visible object (COCO ``annotations``);
* **segmentation** - the visible mask of every object (COCO RLE), from which the semantic mask
  (0 = background, ``category_id`` elsewhere) follows, since the masks of one image are disjoint;
* **classification** - one image-level class (``images[i]["image_label"]``).

Why it is not trivial
---------------------
* The object class is the *shape* (circle, square, triangle, star, ...), never its colour: fill
  colours are random, only constrained to contrast with whatever lies under and next to them,
  and they carry a random brightness gradient, so colour cannot be read off as the label.
* Backgrounds are textured (stripes, checker, noise, waves) with random colours, frequencies,
  orientations and phases, plus a little pixel noise.
* Objects are rotated, mildly stretched, vary in size log-uniformly from ``min_object_size``
  (8 px) to ``max_object_size`` (half the image side by default), may be cut by the image border
  and overlap each other: later objects occlude earlier ones (painter's order) and the labels
  describe the *visible* part only. Objects left with fewer than ``min_visible_pixels`` visible
  pixels are not drawn at all, so every drawn object is labelled and vice versa.
* ``classification_target="related"`` makes the image label the class of the largest visible
  object (so it needs the same shape understanding as the dense tasks);
  ``"unrelated"`` makes it the background texture (a task that competes with the others).

Knobs (see :class:`ScenesConfig`)
---------------------------------
Image size, split sizes, number of shape classes, objects per image, object size range,
minimum visible area, the classification target, label noise and per-task label fractions
(train split only, to study noisy and partially labelled multi-task learning) and the seed.

Determinism
-----------
Each split derives its own seed sequence from ``(seed, split_index)``; each image draws from
its own child sequence, so an image does not depend on the order, the parallelism or the number
of images generated. Pixels never depend on ``label_noise`` or ``label_fraction`` (those draw
from a separate stream). ``dense: true`` keeps every layout, colour and label of the plain set
and shades the colours by the rendered geometry (see :mod:`mtl_lightning.data.scenes.dense`).
:func:`ensure_scenes` stores a dataset under a folder named after :func:`fingerprint` of its
config and reuses it when it is complete.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mtl_lightning.data.coco import masks
from mtl_lightning.data.constants import SPLITS
from mtl_lightning.data.scenes import dense as scenes_dense
from mtl_lightning.data.scenes.dense import DenseScene

__all__ = [
    "DENSE_TASK_NAMES",
    "GENERATOR_VERSION",
    "SHAPE_NAMES",
    "SPLITS",
    "TASK_NAMES",
    "TEXTURE_NAMES",
    "Scene",
    "ScenesConfig",
    "ensure_scenes",
    "fingerprint",
    "generate_scene",
    "generate_split",
]

GENERATOR_VERSION = 1
"""Bump whenever the generated pixels or labels change for an unchanged config."""

SHAPE_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "diamond",
    "crescent",
)
TEXTURE_NAMES: tuple[str, ...] = ("stripes", "checker", "noise", "waves")
TASK_NAMES: tuple[str, ...] = ("classification", "detection", "segmentation")
#: the tasks a ``dense: true`` Scenes set labels besides ``TASK_NAMES``
DENSE_TASK_NAMES: tuple[str, ...] = ("depth", "normals")
CLASSIFICATION_TARGETS: tuple[str, ...] = ("related", "unrelated")

COMPLETE_MARKER = "COMPLETE"
#: the folders (beside ``images/``) of the dense maps, with ``dense: true``
DENSE_DIRS = {"depth": "depth", "normals": "normals"}
MAX_OBJECTS_LIMIT = 64
MAX_SPLIT_SIZE = 1_000_000  # file names have six digits

# Appearance constants (part of GENERATOR_VERSION: changing one changes the data).
_MIN_COLOUR_DISTANCE = 80.0  # RGB distance of a fill colour from what it touches
_COLOUR_TRIES = 100
_SHADING_AMPLITUDE = 25.0  # max brightness change across an object
_PIXEL_NOISE_STD = 3.0
_TEXTURE_CONTRAST = (30.0, 90.0)  # RGB distance between the two texture colours


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}.")


def _check_unit_float(name: str, value: object) -> float:
    if _is_int(value) or isinstance(value, float):
        number = float(value)  # type: ignore[arg-type]
        if 0.0 <= number <= 1.0:
            return number
    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


def _normalise_label_fraction(value: object) -> tuple[tuple[str, float], ...]:
    """Turn a mapping or a sequence of ``(task, fraction)`` pairs into a sorted tuple."""
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value  # type: ignore[assignment]
    try:
        pairs = [tuple(item) for item in items]
    except TypeError:
        pairs = [()]
    result: dict[str, float] = {}
    for pair in pairs:
        known = (*TASK_NAMES, *DENSE_TASK_NAMES)
        if len(pair) != 2 or pair[0] not in known or pair[0] in result:
            raise ValueError(
                f"label_fraction must map distinct tasks among {list(known)} to numbers "
                f"in [0, 1], got {value!r}."
            )
        result[pair[0]] = _check_unit_float(f"label_fraction[{pair[0]!r}]", pair[1])
    return tuple(sorted(result.items()))


@dataclass(frozen=True)
class ScenesConfig:
    """Every knob of the Scenes benchmark; all of them enter :func:`fingerprint`.

    ``label_fraction`` may be given as a dict (``{"segmentation": 0.25}``) or as pairs; it is
    stored as a sorted tuple of ``(task, fraction)`` pairs so that the config stays hashable.
    Tasks not named keep all their labels. Label noise and label fractions apply to the train
    split only; val and test are always clean and fully labelled.
    """

    image_size: int = 128
    num_train: int = 4000
    num_val: int = 500
    num_test: int = 500
    num_classes: int = 5
    min_objects: int = 1
    max_objects: int = 8
    min_object_size: int = 8
    max_object_size: int | None = None  # None -> image_size // 2
    min_visible_pixels: int = 16
    classification_target: str = "related"
    label_noise: float = 0.0
    label_fraction: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    #: also render depth and surface normals and shade the image by them (see
    #: :mod:`mtl_lightning.data.scenes.dense`); layouts, colours and the other labels are the
    #: same either way
    dense: bool = False

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, 16, 4096)
        for name in ("num_train", "num_val", "num_test"):
            _check_int(name, getattr(self, name), 0, MAX_SPLIT_SIZE)
        _check_int("num_classes", self.num_classes, 2, len(SHAPE_NAMES))
        _check_int("min_objects", self.min_objects, 1, MAX_OBJECTS_LIMIT)
        _check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS_LIMIT)
        _check_int("min_object_size", self.min_object_size, 4, self.image_size)
        if self.max_object_size is not None:
            _check_int(
                "max_object_size", self.max_object_size, self.min_object_size, self.image_size
            )
        largest = self.resolved_max_object_size
        if largest < self.min_object_size:
            raise ValueError(
                f"max_object_size (None -> image_size // 2 = {largest}) must be at least "
                f"min_object_size = {self.min_object_size}."
            )
        _check_int("min_visible_pixels", self.min_visible_pixels, 1, largest * largest // 4)
        if self.classification_target not in CLASSIFICATION_TARGETS:
            raise ValueError(
                f"classification_target must be one of {list(CLASSIFICATION_TARGETS)}, "
                f"got {self.classification_target!r}."
            )
        object.__setattr__(self, "label_noise", _check_unit_float("label_noise", self.label_noise))
        object.__setattr__(self, "label_fraction", _normalise_label_fraction(self.label_fraction))
        unlabelled = [task for task, _ in self.label_fraction if task not in self.task_names]
        if unlabelled:
            raise ValueError(f"label_fraction names {unlabelled}, which Scenes labels only "
                             "with dense: true.")
        _check_int("seed", self.seed, 0, 2**63 - 1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScenesConfig:
        """Build a config from a plain dict, e.g. ``info["config"]`` read back from a json."""
        return cls(**dict(values))

    @property
    def resolved_max_object_size(self) -> int:
        """The largest object size in pixels, with ``None`` resolved to ``image_size // 2``."""
        if self.max_object_size is None:
            return self.image_size // 2
        return self.max_object_size

    @property
    def label_fractions(self) -> dict[str, float]:
        """The label fraction of every task (1.0 for tasks not named in ``label_fraction``)."""
        fractions = dict.fromkeys(self.task_names, 1.0)
        fractions.update(self.label_fraction)
        return fractions

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks the set labels: ``TASK_NAMES``, and depth and normals with ``dense``."""
        return (*TASK_NAMES, *DENSE_TASK_NAMES) if self.dense else TASK_NAMES

    @property
    def class_names(self) -> tuple[str, ...]:
        """The object classes: the first ``num_classes`` shape names."""
        return SHAPE_NAMES[: self.num_classes]

    @property
    def image_class_names(self) -> tuple[str, ...]:
        """The image-level classes: shapes (``related``) or textures (``unrelated``)."""
        if self.classification_target == "related":
            return self.class_names
        return TEXTURE_NAMES

    def split_size(self, split: str) -> int:
        """Number of images of ``split``."""
        _check_split(split)
        return int(getattr(self, f"num_{split}"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")


def _canonical_config(config: ScenesConfig) -> dict[str, Any]:
    """The config with defaults resolved, so that equivalent configs hash the same."""
    values = asdict(config)
    values["max_object_size"] = config.resolved_max_object_size
    values["label_fraction"] = config.label_fractions
    values["generator_version"] = GENERATOR_VERSION
    if config.dense:  # dense sets also change with their rendering and shading
        values["dense_version"] = scenes_dense.DENSE_VERSION
    else:  # the datasets made before dense labels existed keep their name
        del values["dense"]
    return values


def fingerprint(config: ScenesConfig) -> str:
    """A short stable hash (12 hex chars) of the config and :data:`GENERATOR_VERSION`."""
    text = json.dumps(_canonical_config(config), sort_keys=True, separators=(",", ":"))
    return sha256(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------


def _regular_polygon(vertices: int, start: float = 0.0) -> np.ndarray:
    angles = start + np.arange(vertices) * (2 * math.pi / vertices)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * (math.pi / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 1.0 / 3.0) -> np.ndarray:
    a = arm
    return np.array(
        [
            (-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
            (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a),
        ],
        dtype=np.float64,
    )  # fmt: skip


def _crescent(offset: float = 0.45, inner_radius: float = 0.8, steps: int = 40) -> np.ndarray:
    """A unit disc minus a disc of ``inner_radius`` shifted right by ``offset``."""
    x_cut = (1.0 - inner_radius**2 + offset**2) / (2.0 * offset)
    y_cut = math.sqrt(1.0 - x_cut**2)
    outer_start = math.atan2(y_cut, x_cut)
    outer = np.linspace(outer_start, 2 * math.pi - outer_start, steps)
    inner_start = math.atan2(y_cut, x_cut - offset)
    inner = np.linspace(2 * math.pi - inner_start, inner_start, steps)[1:-1]
    outer_pts = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    inner_pts = np.stack(
        [offset + inner_radius * np.cos(inner), inner_radius * np.sin(inner)], axis=1
    )
    return np.concatenate([outer_pts, inner_pts])


def _normalise_polygon(points: np.ndarray) -> np.ndarray:
    """Centre the bounding box on the origin and scale its longer side to 2 (extent [-1, 1])."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / ((high - low).max() / 2)


_UNIT_SHAPES: dict[str, np.ndarray] = {
    name: _normalise_polygon(points)
    for name, points in {
        "circle": _regular_polygon(48),
        "square": _regular_polygon(4, math.pi / 4),
        "triangle": _regular_polygon(3, -math.pi / 2),
        "star": _star(),
        "hexagon": _regular_polygon(6),
        "cross": _cross(),
        "diamond": np.array([(0.0, -1.0), (0.55, 0.0), (0.0, 1.0), (-0.55, 0.0)]),
        "crescent": _crescent(),
    }.items()
}

# Max stretch (width / height) of each shape; small enough that no shape turns into another
# (a stretched square must not look like a diamond, a squashed hexagon not like a circle).
_ASPECT_JITTER: dict[str, float] = {
    "circle": 1.25,
    "square": 1.25,
    "triangle": 1.25,
    "star": 1.15,
    "hexagon": 1.15,
    "cross": 1.15,
    "diamond": 1.0,
    "crescent": 1.15,
}

assert set(_UNIT_SHAPES) == set(SHAPE_NAMES) == set(_ASPECT_JITTER)


@dataclass(frozen=True)
class _Placement:
    """Geometry of one object: its class and its polygon in pixel coordinates."""

    category: int  # 0-based into SHAPE_NAMES
    vertices: np.ndarray  # (K, 2) x, y
    centre: tuple[float, float]
    size: float


def _sample_placement(rng: np.random.Generator, config: ScenesConfig) -> _Placement:
    category = int(rng.integers(config.num_classes))
    name = SHAPE_NAMES[category]
    log_low = math.log(config.min_object_size)
    log_high = math.log(config.resolved_max_object_size)
    size = math.exp(rng.uniform(log_low, log_high))
    jitter = _ASPECT_JITTER[name]
    aspect = math.exp(rng.uniform(-math.log(jitter), math.log(jitter)))
    angle = rng.uniform(0.0, 2 * math.pi)
    centre = rng.uniform(0.0, config.image_size, size=2)
    scale = np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)]) * (size / 2)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, sin], [-sin, cos]])
    vertices = (_UNIT_SHAPES[name] * scale) @ rotation + centre
    return _Placement(category, vertices, (float(centre[0]), float(centre[1])), size)


def _render_instances(placements: list[_Placement], image_size: int) -> np.ndarray:
    """Instance-id map (0 = background, k = k-th placement, 1-based) in painter's order."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    for index, placement in enumerate(placements, start=1):
        draw.polygon([tuple(p) for p in placement.vertices.tolist()], fill=index)
    return np.asarray(canvas)


def _prune_occluded(
    placements: list[_Placement], config: ScenesConfig
) -> tuple[list[_Placement], np.ndarray]:
    """Drop placements with too few visible pixels until every remaining one has enough.

    Removing an object only uncovers others, so this terminates after at most one pass per
    placement.
    """
    while True:
        instances = _render_instances(placements, config.image_size)
        counts = np.bincount(instances.ravel(), minlength=len(placements) + 1)[1:]
        keep = counts >= config.min_visible_pixels
        if keep.all():
            return placements, instances
        placements = [p for p, k in zip(placements, keep, strict=True) if k]


def _sample_layout(
    rng: np.random.Generator, config: ScenesConfig
) -> tuple[list[_Placement], np.ndarray]:
    """Add objects one by one (pruning hidden ones) until the sampled count is visible."""
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    placements: list[_Placement] = []
    instances = np.zeros((config.image_size, config.image_size), dtype=np.uint8)
    for attempt in range(20 * target + 100):
        if len(placements) >= target or (
            attempt >= 4 * target + 20 and len(placements) >= config.min_objects
        ):
            break
        placements, instances = _prune_occluded(
            [*placements, _sample_placement(rng, config)], config
        )
    if not placements:
        raise RuntimeError("Could not place a visible object; lower min_visible_pixels.")
    return placements, instances


# --------------------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------------------


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    return coords[None, :].repeat(image_size, 0), coords[:, None].repeat(image_size, 1)


def _rotated(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0.0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    return xx * cos + yy * sin, yy * cos - xx * sin


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u, _ = _rotated(rng, xx, yy)
    period = rng.uniform(6.0, 32.0)
    phase = rng.uniform(0.0, 2 * math.pi)
    return np.clip(0.5 + 2.0 * np.sin(u * (2 * math.pi / period) + phase), 0.0, 1.0)


def _checker(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u, v = _rotated(rng, xx, yy)
    cell = rng.uniform(6.0, 24.0)
    shift = rng.uniform(0.0, cell, size=2)
    parity = np.floor((u + shift[0]) / cell) + np.floor((v + shift[1]) / cell)
    return np.mod(parity, 2.0)


def _value_noise(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    size = xx.shape[0]
    cells = int(rng.integers(3, 10))
    lattice = rng.uniform(0.0, 1.0, size=(cells + 1, cells + 1))
    gx, gy = xx * (cells / size), yy * (cells / size)
    x0, y0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - x0, gy - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep
    top = lattice[y0, x0] * (1 - fx) + lattice[y0, x0 + 1] * fx
    bottom = lattice[y0 + 1, x0] * (1 - fx) + lattice[y0 + 1, x0 + 1] * fx
    values = top * (1 - fy) + bottom * fy
    low, high = values.min(), values.max()
    return (values - low) / max(high - low, 1e-6)


def _waves(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u, v = _rotated(rng, xx, yy)
    period, wobble_period = rng.uniform(8.0, 28.0), rng.uniform(16.0, 64.0)
    amplitude = rng.uniform(1.0, 3.0)
    phases = rng.uniform(0.0, 2 * math.pi, size=2)
    wobble = amplitude * np.sin(v * (2 * math.pi / wobble_period) + phases[1])
    return 0.5 + 0.5 * np.sin(u * (2 * math.pi / period) + wobble + phases[0])


_TEXTURES = {"stripes": _stripes, "checker": _checker, "noise": _value_noise, "waves": _waves}
assert tuple(_TEXTURES) == TEXTURE_NAMES


def _texture_colours(rng: np.random.Generator) -> np.ndarray:
    """Two colours at RGB distance roughly in ``_TEXTURE_CONTRAST`` (before clipping)."""
    first = rng.uniform(0.0, 255.0, size=3)
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    second = np.clip(first + direction * rng.uniform(*_TEXTURE_CONTRAST), 0.0, 255.0)
    return np.stack([first, second])


def _background(rng: np.random.Generator, image_size: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Return (texture index, the two texture colours, the (H, W, 3) float background)."""
    texture = int(rng.integers(len(TEXTURE_NAMES)))
    colours = _texture_colours(rng)
    xx, yy = _grid(image_size)
    weight = _TEXTURES[TEXTURE_NAMES[texture]](rng, xx, yy)[..., None]
    first, second = colours.astype(np.float32)
    return texture, colours, first + (second - first) * weight.astype(np.float32)


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    (ax0, ay0), (ax1, ay1) = a.min(axis=0), a.max(axis=0)
    (bx0, by0), (bx1, by1) = b.min(axis=0), b.max(axis=0)
    return bool(ax0 <= bx1 and bx0 <= ax1 and ay0 <= by1 and by0 <= ay1)


def _contrasting_colour(rng: np.random.Generator, references: np.ndarray) -> np.ndarray:
    """A random colour far from every reference colour (the farthest of the tries otherwise)."""
    candidates = rng.uniform(0.0, 255.0, size=(_COLOUR_TRIES, 3))
    distances = np.linalg.norm(candidates[:, None, :] - references[None, :, :], axis=2)
    nearest = distances.min(axis=1)
    good = np.flatnonzero(nearest >= _MIN_COLOUR_DISTANCE)
    return candidates[good[0] if good.size else int(nearest.argmax())]


def _paint_objects(
    rng: np.random.Generator,
    image: np.ndarray,
    texture_colours: np.ndarray,
    placements: list[_Placement],
    masks: list[np.ndarray],
) -> None:
    """Paint each visible mask with a contrasting colour and a linear brightness gradient."""
    colours: list[np.ndarray] = []
    background_refs = [*texture_colours, texture_colours.mean(axis=0)]
    for index, (placement, mask) in enumerate(zip(placements, masks, strict=True)):
        neighbours = [
            colours[j]
            for j in range(index)
            if _boxes_overlap(placements[j].vertices, placement.vertices)
        ]
        colour = _contrasting_colour(rng, np.stack(background_refs + neighbours))
        colours.append(colour)
        angle = rng.uniform(0.0, 2 * math.pi)
        amplitude = rng.uniform(-_SHADING_AMPLITUDE, _SHADING_AMPLITUDE)
        ys, xs = np.nonzero(mask)
        along = (xs + 0.5 - placement.centre[0]) * math.cos(angle)
        along += (ys + 0.5 - placement.centre[1]) * math.sin(angle)
        shade = amplitude * np.clip(along / (placement.size / 2), -1.0, 1.0)
        image[ys, xs] = colour[None, :] + shade[:, None]


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One generated image with its clean labels.

    ``categories`` are 0-based shape classes and ``masks`` boolean visible masks, both in
    drawing (z) order; ``image_label`` is the clean 0-based image-level class.
    """

    image: np.ndarray  # (H, W, 3) uint8
    texture: int
    categories: list[int]
    masks: list[np.ndarray]
    image_label: int
    dense: DenseScene | None = None  # depth and normals, with ``config.dense``

    @property
    def semantic_mask(self) -> np.ndarray:
        """(H, W) uint8: 0 = background, ``category + 1`` on each object's visible pixels."""
        semantic = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for category, mask in zip(self.categories, self.masks, strict=True):
            semantic[mask] = category + 1
        return semantic


def _image_seed(config: ScenesConfig, split: str, index: int) -> np.random.SeedSequence:
    # Equal to SeedSequence([seed, split_index]).spawn(n)[index] for any n > index.
    return np.random.SeedSequence([config.seed, SPLITS.index(split)], spawn_key=(index,))


def generate_scene(config: ScenesConfig, split: str, index: int) -> Scene:
    """Generate image ``index`` of ``split`` (0-based) in memory, independent of all others."""
    _check_split(split)
    # children 0 and 1 are the pixels' and the labels' streams, 2 the dense labels' own
    scene_seed, _, dense_seed = _image_seed(config, split, index).spawn(3)
    rng = np.random.default_rng(scene_seed)
    texture, texture_colours, image = _background(rng, config.image_size)
    placements, instances = _sample_layout(rng, config)
    masks = [instances == k for k in range(1, len(placements) + 1)]
    _paint_objects(rng, image, texture_colours, placements, masks)
    dense = None
    if config.dense:
        dense = scenes_dense.render(
            np.random.default_rng(dense_seed), config.image_size,
            [SHAPE_NAMES[p.category] for p in placements], [p.centre for p in placements],
            [p.size for p in placements],
            [[j for j in range(k) if _boxes_overlap(placements[j].vertices, p.vertices)]
             for k, p in enumerate(placements)],
            masks)
        image = scenes_dense.shade(image, dense)  # lit by the geometry the labels describe
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * _PIXEL_NOISE_STD
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    categories = [p.category for p in placements]
    if config.classification_target == "related":
        areas = [int(mask.sum()) for mask in masks]
        image_label = categories[int(np.argmax(areas))]  # ties: the lowest index
    else:
        image_label = texture
    return Scene(pixels, texture, categories, masks, image_label, dense)


def _other_class(rng: np.random.Generator, label: int, num_labels: int) -> int:
    other = int(rng.integers(num_labels - 1))
    return other + 1 if other >= label else other


def _noisy_labels(
    config: ScenesConfig, split: str, index: int, scene: Scene
) -> tuple[list[int], int, list[str]]:
    """Apply train-only label noise and label fractions: (categories, image label, tasks)."""
    if split != "train":
        return list(scene.categories), scene.image_label, list(config.task_names)
    _, label_seed = _image_seed(config, split, index).spawn(2)
    rng = np.random.default_rng(label_seed)
    noise = config.label_noise
    categories = [
        _other_class(rng, c, config.num_classes) if rng.random() < noise else c
        for c in scene.categories
    ]
    image_label = scene.image_label
    if rng.random() < noise:
        image_label = _other_class(rng, image_label, len(config.image_class_names))
    fractions = config.label_fractions
    # the dense tasks draw after the others: their decisions change none of the others'
    tasks = [task for task in config.task_names if rng.random() < fractions[task]]
    return categories, image_label, tasks


def _mask_annotation(mask: np.ndarray, category: int) -> dict[str, Any]:
    """COCO annotation (without ids) of one visible mask: tight box (whole pixels), area and
    RLE."""
    rle = masks.encode(mask)
    box = masks.mask_box(rle, *mask.shape)
    return {
        "category_id": category + 1,
        "bbox": [int(v) for v in box],
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": rle,
    }


def _image_name(index: int) -> str:
    return f"images/{index:06d}.png"


def _generate_and_save(
    job: tuple[ScenesConfig, str, int, str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate one image, write its PNG and return its COCO image record and annotations."""
    config, split, index, split_dir = job
    scene = generate_scene(config, split, index)
    name = _image_name(index)
    Image.fromarray(scene.image).save(Path(split_dir) / name, format="PNG")
    if scene.dense is not None:
        stem = Path(name).stem
        Image.fromarray(scenes_dense.depth_to_png(scene.dense.depth)).save(
            Path(split_dir) / DENSE_DIRS["depth"] / f"{stem}.png", format="PNG")
        Image.fromarray(scenes_dense.normals_to_png(scene.dense.normals)).save(
            Path(split_dir) / DENSE_DIRS["normals"] / f"{stem}.png", format="PNG")
    categories, image_label, tasks = _noisy_labels(config, split, index, scene)
    record = {
        "id": index + 1,
        "file_name": name,
        "width": config.image_size,
        "height": config.image_size,
        "image_label": int(image_label),
        "texture": TEXTURE_NAMES[scene.texture],
        "labelled_tasks": tasks,
    }
    annotations = [
        _mask_annotation(mask, category)
        for mask, category in zip(scene.masks, categories, strict=True)
    ]
    return record, annotations


def _generate_records(
    jobs: list[tuple[ScenesConfig, str, int, str]], num_workers: int
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    if num_workers <= 0 or len(jobs) <= 1:
        yield from map(_generate_and_save, jobs)
        return
    chunk = max(1, min(64, len(jobs) // (4 * num_workers)))
    with multiprocessing.get_context().Pool(num_workers) as pool:
        yield from pool.imap(_generate_and_save, jobs, chunksize=chunk)


def _coco_document(
    config: ScenesConfig,
    split: str,
    results: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]],
) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record, image_annotations in results:
        images.append(record)
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": record["id"], **annotation})
    return {
        "info": {
            "description": "mtl_lightning Scenes benchmark",
            "fingerprint": fingerprint(config),
            "config": asdict(config),
            "split": split,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(config.class_names)
        ],
        "image_categories": [
            {"id": i, "name": name} for i, name in enumerate(config.image_class_names)
        ],
        **({"dense_maps": dense_maps()} if config.dense else {}),
    }


def dense_maps() -> dict[str, dict[str, Any]]:
    """Where a dense Scenes split keeps its per-image maps (folders relative to the split's
    image root, one PNG per image named after it) and how to read them."""
    return {"depth": {"dir": DENSE_DIRS["depth"], "scale": scenes_dense.DEPTH_SCALE},
            "normals": {"dir": DENSE_DIRS["normals"]}}


def generate_split(
    config: ScenesConfig, split: str, out_dir: str | Path, num_workers: int = 0
) -> Path:
    """Write ``out_dir/<split>/images/NNNNNN.png`` and ``out_dir/<split>.json``.

    ``file_name`` in the json is relative to ``out_dir/<split>/``. With ``num_workers > 0``
    images are generated by a process pool; the output is byte-identical to serial generation.
    Returns the json path.
    """
    _check_split(split)
    split_dir = Path(out_dir) / split
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    if config.dense:
        for folder in DENSE_DIRS.values():
            (split_dir / folder).mkdir(exist_ok=True)
    jobs = [(config, split, i, str(split_dir)) for i in range(config.split_size(split))]
    document = _coco_document(config, split, _generate_records(jobs, num_workers))
    json_path = Path(out_dir) / f"{split}.json"
    json_path.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    return json_path


def ensure_scenes(config: ScenesConfig, root: str | Path, num_workers: int = 0) -> Path:
    """Return ``root/scenes-<fingerprint>``, generating all splits there unless complete.

    A dataset is complete once its ``COMPLETE`` marker exists; it is written last, inside a
    temporary sibling folder that is then renamed into place, so an interrupted generation is
    never reused (an incomplete target folder is replaced, a stale temporary one ignored).
    """
    root = Path(root)
    target = root / f"scenes-{fingerprint(config)}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for split in SPLITS:
            generate_split(config, split, staging, num_workers=num_workers)
        (staging / COMPLETE_MARKER).write_text(fingerprint(config) + "\n", encoding="utf-8")
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Atomically rename ``staging`` to ``target`` unless another process completed it."""
    if target.exists() and not (target / COMPLETE_MARKER).is_file():
        shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / COMPLETE_MARKER).is_file():
            raise
