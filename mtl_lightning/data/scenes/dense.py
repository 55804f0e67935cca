"""Depth and surface normals for the Scenes benchmark, rendered from each scene's geometry,
and the shading that makes them visible in the image.

The labels describe:

- **The background**, a plane tilted away from the camera (a floor or a wall seen at an
  angle) by ``BACKGROUND_TILT`` degrees in a random direction. The camera is orthographic
  for the plane (``BACKGROUND_SIDE`` metres per image side), so its depth grows linearly in
  the tilt's direction with slope ``tan(tilt)`` around ``BACKGROUND_CENTRE``, and its normal
  leans the same way (the steeper the depth ramp, the more the normal leans).
- **Each object**, at a distance from the camera that follows perspective (a larger
  apparent size means nearer: ``distance = FOCAL * OBJECT_EXTENT / size``), then pulled in
  front of every earlier object it overlaps, so occlusion follows distance (the painter's
  order the image was drawn in puts later objects on top). Objects are always in front of
  the background.
- **Shapes** are 3-D: a circle is a sphere (its depth bulges towards the camera and its
  normals point out of the sphere); every other shape is a flat plate with a random tilt of
  up to ``MAX_TILT`` degrees (a constant normal, and the depth gradient that tilt implies).

Labels cover the visible surface only, like the masks. Units: depth in metres (stored as
16-bit PNGs in millimetres, ``DEPTH_SCALE`` metres per unit), normals as unit vectors in the
camera frame (x right, y down, z towards the camera; stored as 8-bit RGB in the usual
``(n + 1) / 2`` encoding).

**Shading** (:func:`shade`). Labels the pixels do not show cannot be learnt, so a dense set
lights its image by the same geometry: every pixel's colour is scaled by Lambertian shading
(``AMBIENT`` plus the rest times ``max(0, n . LIGHT)``; Lambert's cosine law) and then mixed
with a haze colour by the transmittance ``exp(-HAZE_DENSITY * depth)`` (Koschmieder's model
of atmospheric haze). The haze is what shows the background's tilt: its strength follows
the depth ramp across the image. The light comes from above and in front, with no
left-right component, so a horizontally flipped image (the training augmentation) is lit
the same way. Shading is applied to the painted colours before the pixel noise; it draws
no random numbers, so a dense image differs from the plain one only by the shading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: metres per unit of the 16-bit depth PNGs
DEPTH_SCALE = 0.001
#: bump whenever a dense set's pixels or labels change for an unchanged config (it enters the
#: fingerprint of dense sets only)
DENSE_VERSION = 2
#: the background plane's depth at the image centre and the metres one image side spans
BACKGROUND_CENTRE, BACKGROUND_SIDE = 7.5, 2.8
#: the focal length in pixels per image side and the objects' physical extent in metres
FOCAL_PER_SIDE = 1.0
OBJECT_EXTENT = 0.25
#: how much nearer an object is pulled than an earlier object it overlaps
OCCLUSION_GAP = 0.9
#: the largest tilt of a flat plate, degrees
MAX_TILT = 40.0
#: the background plane's tilt range, degrees
BACKGROUND_TILT = (20.0, 60.0)
#: the nearest background depth the tilt range allows (at an image corner): objects stay
#: in front of it
BACKGROUND_NEAR = (BACKGROUND_CENTRE - math.sqrt(0.5) * BACKGROUND_SIDE
                   * math.tan(math.radians(BACKGROUND_TILT[1])))
#: the direction towards the light (camera frame: x right, y down, z towards the camera)
LIGHT = (0.0, -0.6, 1.0)
#: the share of the light that reaches a surface whatever its normal
AMBIENT = 0.45
#: the haze's extinction per metre and its colour
HAZE_DENSITY = 0.12
HAZE_COLOUR = (185.0, 195.0, 210.0)


@dataclass(frozen=True)
class DenseScene:
    """The dense labels of one scene."""

    depth: np.ndarray  # (H, W) float32, metres, every pixel valid
    normals: np.ndarray  # (H, W, 3) float32, unit vectors


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.maximum(np.linalg.norm(vector, axis=-1, keepdims=True), 1e-12)


def background(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The tilted background plane: (H, W) depth and its (3,) normal."""
    direction = rng.uniform(0.0, 2 * math.pi)
    tilt = math.radians(rng.uniform(*BACKGROUND_TILT))
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    xx, yy = np.meshgrid(coords, coords)
    # metres from the image centre along ``direction``; depth grows that way by tan(tilt)
    along = (xx * math.cos(direction) + yy * math.sin(direction)) * BACKGROUND_SIDE
    depth = BACKGROUND_CENTRE + math.tan(tilt) * along
    # the normal (z towards the camera) leans where the depth grows, by the tilt
    normal = np.array([math.sin(tilt) * math.cos(direction),
                       math.sin(tilt) * math.sin(direction), math.cos(tilt)])
    return depth.astype(np.float32), normal.astype(np.float32)


def object_distances(sizes: list[float], overlaps: list[list[int]], image_size: int,
                     near_limit: float) -> list[float]:
    """Each object's distance: perspective from its size, pulled in front of the earlier
    objects it overlaps (``overlaps[k]``: indices ``j < k``), never behind ``near_limit``."""
    focal = FOCAL_PER_SIDE * image_size
    distances: list[float] = []
    for k, size in enumerate(sizes):
        distance = min(focal * OBJECT_EXTENT / max(size, 1.0), near_limit * OCCLUSION_GAP)
        for j in overlaps[k]:
            distance = min(distance, distances[j] * OCCLUSION_GAP)
        distances.append(distance)
    return distances


def render(rng: np.random.Generator, image_size: int, shapes: list[str],
           centres: list[tuple[float, float]], sizes: list[float], overlaps: list[list[int]],
           masks: list[np.ndarray]) -> DenseScene:
    """Depth and normals of a scene whose objects (in painter's order) have the given shape
    names, centres and sizes in pixels, pairwise ``overlaps`` and visible ``masks``."""
    depth, plane_normal = background(rng, image_size)
    normals = np.broadcast_to(plane_normal, (image_size, image_size, 3)).copy()
    distances = object_distances(sizes, overlaps, image_size, BACKGROUND_NEAR)
    focal = FOCAL_PER_SIDE * image_size
    for shape, (cx, cy), size, distance, mask in zip(shapes, centres, sizes, distances, masks):
        ys, xs = np.nonzero(mask)
        dx = (xs + 0.5 - cx) / (size / 2)
        dy = (ys + 0.5 - cy) / (size / 2)
        radius = distance * (size / 2) / focal  # the object's half-extent in metres
        if shape == "circle":
            rho2 = np.clip(dx * dx + dy * dy, 0.0, 1.0)
            height = np.sqrt(1.0 - rho2)
            depth[ys, xs] = distance - radius * height
            normals[ys, xs] = _unit(np.stack([dx, dy, height], axis=-1))
        else:
            direction = rng.uniform(0.0, 2 * math.pi)
            tilt = math.radians(rng.uniform(0.0, MAX_TILT))
            slope = math.tan(tilt)
            nx, ny = math.sin(tilt) * math.cos(direction), math.sin(tilt) * math.sin(direction)
            # depth grows along ``direction``, where the normal leans (as for the background)
            along = dx * math.cos(direction) + dy * math.sin(direction)
            depth[ys, xs] = distance + radius * slope * along
            normals[ys, xs] = np.array([nx, ny, math.cos(tilt)], dtype=np.float32)
    return DenseScene(depth.astype(np.float32), _unit(normals).astype(np.float32))


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """Depth in metres as uint16 units of ``DEPTH_SCALE`` (0 stays 0: no ground truth)."""
    return np.clip(np.rint(depth / DEPTH_SCALE), 0, 65535).astype(np.uint16)


def normals_to_png(normals: np.ndarray) -> np.ndarray:
    """Unit normals as uint8 RGB, ``(n + 1) / 2 * 255``."""
    return np.clip(np.rint((normals + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)


def png_to_normals(rgb: np.ndarray) -> np.ndarray:
    """The inverse of :func:`normals_to_png` (a black pixel, all zeros, has no ground
    truth and stays a zero vector)."""
    valid = rgb.any(axis=-1, keepdims=True)
    return (rgb.astype(np.float32) / 255.0 * 2.0 - 1.0) * valid


def lambert(normals: np.ndarray) -> np.ndarray:
    """(H, W) brightness factor of unit ``normals`` lit by ``LIGHT``: ``AMBIENT`` plus the
    rest times the clipped cosine to the light (Lambert's cosine law)."""
    light = _unit(np.asarray(LIGHT, dtype=np.float32))
    cosine = np.clip(normals @ light, 0.0, 1.0)
    return (AMBIENT + (1.0 - AMBIENT) * cosine).astype(np.float32)


def transmittance(depth: np.ndarray) -> np.ndarray:
    """(H, W) share of a surface's light that crosses ``depth`` metres of haze."""
    return np.exp(-HAZE_DENSITY * depth).astype(np.float32)


def shade(colours: np.ndarray, dense: DenseScene) -> np.ndarray:
    """The (H, W, 3) float ``colours`` (surface albedo, 0-255) as lit and hazed by the
    scene's geometry: ``colours * lambert * t + HAZE_COLOUR * (1 - t)``."""
    t = transmittance(dense.depth)[..., None]
    lit = colours * lambert(dense.normals)[..., None]
    return (lit * t + np.asarray(HAZE_COLOUR, dtype=np.float32) * (1.0 - t)).astype(np.float32)
