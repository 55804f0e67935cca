"""Scenes renders depth and surface normals without changing its images: occlusion follows
distance, spheres bulge towards the camera, maps are written beside the COCO file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtl_lightning.data import scenes_dense
from mtl_lightning.data.scenes import ScenesConfig, generate_scene, generate_split
from mtl_lightning.data.scenes_dense import (
    BACKGROUND_NEAR,
    DEPTH_SCALE,
    depth_to_png,
    normals_to_png,
    object_distances,
    png_to_normals,
)

SMALL = {"image_size": 64, "num_train": 6, "num_val": 2, "num_test": 2, "num_classes": 8}


def test_dense_labels_change_no_pixel_and_no_other_label() -> None:
    plain, dense = ScenesConfig(**SMALL), ScenesConfig(**SMALL, dense=True)
    for index in range(6):
        a, b = generate_scene(plain, "train", index), generate_scene(dense, "train", index)
        assert np.array_equal(a.image, b.image)
        assert a.categories == b.categories and a.image_label == b.image_label
        assert a.dense is None and b.dense is not None


def test_default_dataset_keeps_its_fingerprint_and_dense_gets_its_own() -> None:
    from mtl_lightning.data.scenes import fingerprint

    # the default config's name from before dense labels existed: its data is reused
    assert fingerprint(ScenesConfig()) == "cf387da90806"
    assert fingerprint(ScenesConfig(dense=True)) != fingerprint(ScenesConfig())


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
    from mtl_lightning.data.scenes import _noisy_labels

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
