"""Scenes renders depth and surface normals and shades its images by them: occlusion follows
distance, spheres bulge towards the camera, the background's depth ramp follows its tilt,
the shading is Lambertian plus haze, maps are written beside the COCO file, and the plain
(default) set keeps its pixels."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl_lightning.data.scenes import dense as scenes_dense
from mtl_lightning.data.scenes import generator as scenes
from mtl_lightning.data.scenes.dense import (
    AMBIENT,
    BACKGROUND_NEAR,
    BACKGROUND_SIDE,
    DEPTH_SCALE,
    HAZE_COLOUR,
    HAZE_DENSITY,
    LIGHT,
    DenseScene,
    depth_to_png,
    normals_to_png,
    object_distances,
    png_to_normals,
)
from mtl_lightning.data.scenes.generator import ScenesConfig, generate_scene, generate_split

SMALL = {"image_size": 64, "num_train": 6, "num_val": 2, "num_test": 2, "num_classes": 8}


def test_the_default_sets_pixels_are_those_it_always_had() -> None:
    """The README's quality bar was measured on these pixels: shading must not touch them."""
    digest = hashlib.sha256()
    config = ScenesConfig(**SMALL)
    for index in range(4):
        digest.update(generate_scene(config, "train", index).image.tobytes())
    assert digest.hexdigest()[:16] == "6c9098256c75e79e"


def test_dense_images_differ_from_plain_ones_exactly_by_the_shading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same layout, colours and labels; each pixel is the plain one lit and hazed by the
    rendered geometry (checked without pixel noise, which is added after the shading)."""
    monkeypatch.setattr(scenes, "_PIXEL_NOISE_STD", 0.0)
    plain, dense = ScenesConfig(**SMALL), ScenesConfig(**SMALL, dense=True)
    for index in range(6):
        a, b = generate_scene(plain, "train", index), generate_scene(dense, "train", index)
        assert a.categories == b.categories and a.image_label == b.image_label
        assert all(np.array_equal(m, n) for m, n in zip(a.masks, b.masks, strict=True))
        assert a.dense is None and b.dense is not None
        expected = scenes_dense.shade(a.image.astype(np.float32), b.dense)
        unclipped = ((a.image > 0) & (a.image < 255)).all(-1)  # plain colours not clipped
        error = np.abs(b.image.astype(np.float32) - expected)[unclipped]
        assert error.max() <= 1.0  # two roundings
        assert np.abs(b.image.astype(np.float32) - a.image).mean() > 10.0


def test_lambertian_shading_follows_the_normal_and_haze_the_depth() -> None:
    """A flat patch facing the light is lit fully, one facing away gets the ambient share
    only, one facing the camera the predicted cosine; farther patches fade into the haze."""
    light = np.asarray(LIGHT) / np.linalg.norm(LIGHT)
    patches = np.array([light, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    normals = np.repeat(patches[None], 2, axis=0)  # (2, 3, 3): two rows of three patches
    depth = np.array([[1.0] * 3, [3.0] * 3], dtype=np.float32)
    colour = np.array([200.0, 100.0, 50.0], dtype=np.float32)
    shaded = scenes_dense.shade(np.broadcast_to(colour, (2, 3, 3)).copy(),
                                DenseScene(depth, normals))
    haze = np.asarray(HAZE_COLOUR, dtype=np.float32)
    for row, metres in enumerate((1.0, 3.0)):
        t = math.exp(-HAZE_DENSITY * metres)
        brightness = (shaded[row] - haze * (1 - t)) / (colour * t)  # per patch and channel
        assert np.allclose(brightness[0], 1.0, atol=1e-4)
        assert np.allclose(brightness[1], AMBIENT, atol=1e-4)
        assert np.allclose(brightness[2], AMBIENT + (1 - AMBIENT) * light[2], atol=1e-4)
    assert np.allclose(brightness[0] / brightness[1], 1 / AMBIENT, atol=1e-3)
    # the contrast between the lit and the unlit patch falls with depth by the transmittance
    near, far = (shaded[r, 0] - shaded[r, 1] for r in (0, 1))
    assert np.allclose(far / near, math.exp(-HAZE_DENSITY * 2.0), atol=1e-4)


def test_the_backgrounds_depth_ramp_follows_its_tilt() -> None:
    """The plane's depth gradient (metres per metre) is tan(tilt) towards where its normal
    leans, so the haze ramp the image shows determines the normal."""
    size = 64
    metres_per_pixel = BACKGROUND_SIDE / size
    tilts = []
    for seed in range(8):
        depth, normal = scenes_dense.background(np.random.default_rng(seed), size)
        gy, gx = np.gradient(depth.astype(np.float64), metres_per_pixel)
        assert np.allclose(gx, normal[0] / normal[2], atol=1e-3)
        assert np.allclose(gy, normal[1] / normal[2], atol=1e-3)
        assert depth.min() >= BACKGROUND_NEAR - 1e-4
        tilts.append(math.degrees(math.acos(normal[2])))
    assert max(tilts) - min(tilts) > 10  # the tilts differ, and so do the ramps


def test_default_dataset_keeps_its_fingerprint_and_dense_gets_its_own() -> None:
    from mtl_lightning.data.scenes.generator import fingerprint

    # the default config's name from before dense labels existed: its data is reused
    assert fingerprint(ScenesConfig()) == "cf387da90806"
    assert fingerprint(ScenesConfig(dense=True)) != fingerprint(ScenesConfig())


def test_a_new_dense_rendering_renames_dense_sets_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense set generated before the shading must not be reused as if it were shaded."""
    from mtl_lightning.data.scenes.generator import fingerprint

    plain, dense = fingerprint(ScenesConfig()), fingerprint(ScenesConfig(dense=True))
    monkeypatch.setattr(scenes_dense, "DENSE_VERSION", scenes_dense.DENSE_VERSION + 1)
    assert fingerprint(ScenesConfig()) == plain
    assert fingerprint(ScenesConfig(dense=True)) != dense


def test_a_later_overlapping_object_is_nearer_and_every_object_is_before_the_background() -> None:
    distances = object_distances([10.0, 10.0, 40.0], [[], [0], []], image_size=64,
                                 near_limit=BACKGROUND_NEAR)
    assert distances[1] < distances[0]  # overlaps object 0, drawn over it
    assert distances[2] < distances[0]  # larger apparent size: nearer (perspective)
    assert max(distances) < BACKGROUND_NEAR
    config = ScenesConfig(**SMALL, dense=True)
    for index in range(6):
        scene = generate_scene(config, "train", index)
        objects = np.any(scene.masks, axis=0)
        assert scene.dense.depth[objects].max() < scene.dense.depth[~objects].min()
        assert np.allclose(np.linalg.norm(scene.dense.normals, axis=-1), 1.0, atol=1e-5)


def test_spheres_bulge_towards_the_camera_and_plates_are_flat() -> None:
    size, centre = 30.0, (32.0, 32.0)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    disc = np.hypot(xx - centre[0], yy - centre[1]) < size / 2 - 1
    dense = scenes_dense.render(np.random.default_rng(0), 64, ["circle", "square"],
                                [centre, centre], [size, size], [[], []],
                                [disc, np.zeros_like(disc)])
    normals, depth = dense.normals, dense.depth
    right = disc & (xx > centre[0] + 5) & (np.abs(yy - centre[1]) < 2)
    left = disc & (xx < centre[0] - 5) & (np.abs(yy - centre[1]) < 2)
    below = disc & (yy > centre[1] + 5) & (np.abs(xx - centre[0]) < 2)
    assert normals[right, 0].min() > 0 > normals[left, 0].max()
    assert normals[below, 1].min() > 0  # y points down the image
    middle = np.hypot(xx - centre[0], yy - centre[1]) < 2
    rim = disc & (np.hypot(xx - centre[0], yy - centre[1]) > size / 2 - 3)
    assert depth[middle].max() < depth[rim].min()
    assert normals[middle, 2].min() > 0.99  # facing the camera
    plate = scenes_dense.render(np.random.default_rng(1), 64, ["square"], [centre], [size],
                                [[]], [disc])
    assert np.allclose(plate.normals[disc], plate.normals[disc][0], atol=1e-6)


def test_maps_round_trip_through_their_png_encodings() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 10.0, (8, 8)).astype(np.float32)
    assert np.abs(depth_to_png(depth) * DEPTH_SCALE - depth).max() <= DEPTH_SCALE / 2 + 1e-6
    normals = scenes_dense._unit(rng.normal(size=(8, 8, 3))).astype(np.float32)
    decoded = png_to_normals(normals_to_png(normals))
    assert np.abs(decoded - normals).max() < 1 / 255 + 1e-6
    assert not png_to_normals(np.zeros((2, 2, 3), dtype=np.uint8)).any()


def test_a_dense_split_writes_maps_beside_the_images_and_names_them_in_the_file(
        tmp_path: Path) -> None:
    config = ScenesConfig(**SMALL, dense=True)
    path = generate_split(config, "val", tmp_path)
    document = json.loads(path.read_text())
    maps = document["dense_maps"]
    assert maps["depth"] == {"dir": "depth", "scale": DEPTH_SCALE}
    for record in document["images"]:
        stem = Path(record["file_name"]).stem
        depth = np.asarray(Image.open(tmp_path / "val" / maps["depth"]["dir"] / f"{stem}.png"))
        normals = np.asarray(Image.open(tmp_path / "val" / maps["normals"]["dir"]
                                        / f"{stem}.png"))
        assert depth.dtype == np.uint16 and depth.shape == (64, 64)
        assert normals.dtype == np.uint8 and normals.shape == (64, 64, 3)
        scene = generate_scene(config, "val", record["id"] - 1)
        assert np.abs(depth * DEPTH_SCALE - scene.dense.depth).max() <= DEPTH_SCALE
    plain = json.loads(generate_split(ScenesConfig(**SMALL), "val", tmp_path / "p").read_text())
    assert "dense_maps" not in plain


def test_dense_label_fractions_leave_the_other_tasks_decisions_alone(tmp_path: Path) -> None:
    """A fraction of depth labels marks images unlabelled for depth; the three original
    tasks' labelled flags are those of the config without dense labels."""
    from mtl_lightning.data.scenes.generator import _noisy_labels

    plain = ScenesConfig(**{**SMALL, "num_train": 40}, label_fraction={"segmentation": 0.5})
    dense = ScenesConfig(**{**SMALL, "num_train": 40}, dense=True,
                         label_fraction={"segmentation": 0.5, "depth": 0.5})
    depth_labelled = 0
    for index in range(40):
        scene = generate_scene(plain, "train", index)
        _, _, before = _noisy_labels(plain, "train", index, scene)
        _, _, after = _noisy_labels(dense, "train", index, generate_scene(dense, "train", index))
        assert [t for t in after if t not in ("depth", "normals")] == before
        assert "normals" in after
        depth_labelled += "depth" in after
    assert 8 <= depth_labelled <= 32
