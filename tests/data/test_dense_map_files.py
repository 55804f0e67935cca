"""Depth and normal maps beside a COCO file: read per image (PNG or .npy), scaled, moved with
the image; a missing map leaves the image unlabelled for that task; a bad map is one sentence
naming the file. Dense Scenes splits are read through the same path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lightning.data.coco.dataset import CocoMultiTaskDataset
from mtl_lightning.data.scenes.generator import ScenesConfig, generate_split
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap
from mtl_lightning.shared.errors import DataError
from mtl_lightning.tasks.depth import DepthTask
from mtl_lightning.tasks.normals import NormalsTask

H, W = 12, 16


def coco_with_maps(root: Path, count: int = 3) -> Path:
    """``count`` photos with one box each, 16-bit depth PNGs (mm) and normal PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "depth").mkdir()
    (root / "images" / "normals").mkdir()
    images, annotations = [], []
    for i in range(count):
        name = f"photo{i}.jpg"
        Image.fromarray(np.full((H, W, 3), 40 * i, dtype=np.uint8)).save(root / "images" / name)
        depth = np.full((H, W), 1000 * (i + 1), dtype=np.uint16)
        depth[0] = 0  # no ground truth on the first row
        Image.fromarray(depth).save(root / "images" / "depth" / f"photo{i}.png")
        normals = np.zeros((H, W, 3), dtype=np.uint8)
        normals[..., 2] = 255  # (0, 0, 1) facing the camera, encoded (n + 1) / 2
        normals[..., :2] = 128
        Image.fromarray(normals).save(root / "images" / "normals" / f"photo{i}.png")
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1,
                            "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(document))
    return path


MAPS = {"depth": {"dir": "depth", "scale": 0.001}, "normals": {"dir": "normals"}}


def dataset(path: Path, **kwargs) -> CocoMultiTaskDataset:
    return CocoMultiTaskDataset(path, path.parent / "images",
                                tasks=("detection", "depth", "normals"), dense_maps=MAPS,
                                **kwargs)


def test_maps_are_read_scaled_and_typed(tmp_path: Path) -> None:
    sample = dataset(coco_with_maps(tmp_path))[1]
    depth, normals = sample["targets"]["depth"], sample["targets"]["normals"]
    assert isinstance(depth, DepthMap) and depth.shape == (1, H, W)
    assert float(depth[0, 5, 5]) == pytest.approx(2.0)  # 2000 mm
    assert float(depth[0, 0].abs().max()) == 0.0
    assert isinstance(normals, NormalMap) and normals.shape == (3, H, W)
    assert normals[:, 5, 5].tolist() == pytest.approx([0.0039, 0.0039, 1.0], abs=1e-3)
    assert sample["has"] == {"detection": True, "depth": True, "normals": True}


def test_a_missing_map_leaves_the_image_unlabelled_for_that_task(tmp_path: Path) -> None:
    path = coco_with_maps(tmp_path)
    (tmp_path / "images" / "depth" / "photo2.png").unlink()
    sample = dataset(path)[2]
    assert sample["has"]["depth"] is False and sample["has"]["normals"] is True
    assert float(sample["targets"]["depth"].abs().max()) == 0.0
    depth = DepthTask()
    target = sample["targets"]["depth"][None]
    zero = depth.loss(torch.ones(1, H, W, requires_grad=True), target, torch.tensor([False]))
    assert float(zero) == 0.0


def test_bad_maps_are_one_sentence_naming_the_file(tmp_path: Path) -> None:
    path = coco_with_maps(tmp_path)
    maps = tmp_path / "images"
    Image.fromarray(np.zeros((H + 1, W), dtype=np.uint16)).save(maps / "depth" / "photo0.png")
    with pytest.raises(DataError, match=r"depth map '.*photo0\.png' is 13 x 16 but its image "
                                        r"is 12 x 16"):
        dataset(path)[0]
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(maps / "normals" / "photo1.png")
    with pytest.raises(DataError, match=r"normal map '.*photo1\.png' has shape \(12, 16\).*3 "
                                        r"channels"):
        dataset(path)[1]
    (maps / "depth" / "photo2.png").unlink()
    broken = np.ones((H, W), dtype=np.float32)
    broken[3, 3] = np.nan
    np.save(maps / "depth" / "photo2.npy", broken)
    with pytest.raises(DataError, match=r"photo2\.npy' contains NaN"):
        dataset(path)[2]
    with pytest.raises(DataError, match=r"has no \['depth'\] maps: give data\.dense_maps"):
        CocoMultiTaskDataset(path, maps, tasks=("detection", "depth"))
    with pytest.raises(ValueError, match=r"dense maps are read for"):
        CocoMultiTaskDataset(path, maps, tasks=("detection",), dense_maps={"edges": {"dir": "x"}})


def test_a_dense_scenes_split_is_read_through_its_own_dense_maps_entry(tmp_path: Path) -> None:
    config = ScenesConfig(image_size=32, num_train=2, num_val=2, num_test=2, dense=True)
    json_path = generate_split(config, "val", tmp_path)
    data = CocoMultiTaskDataset(json_path, tmp_path / "val",
                                tasks=("segmentation", "depth", "normals"))
    sample = data[0]
    assert sample["has"]["depth"] and sample["has"]["normals"]
    assert 0.1 < float(sample["targets"]["depth"].min()) < 10.5
    assert torch.allclose(sample["targets"]["normals"].norm(dim=0),
                          torch.ones(32, 32), atol=0.02)


def test_letterboxed_predictions_are_cropped_before_resizing() -> None:
    """Only the top-left region holding the image is mapped back (padding is dropped)."""
    depth, normals = DepthTask(), NormalsTask()
    prediction = torch.zeros(8, 8)
    prediction[:4, :8] = 3.0  # the image: the top half; the rest is padding
    back = depth.resize_prediction(prediction, (4, 8), (2, 4))
    assert back.shape == (2, 4) and torch.allclose(back, torch.full((2, 4), 3.0))
    vectors = torch.zeros(3, 8, 8)
    vectors[2, :4] = 1.0
    vectors[0, 4:] = 1.0
    back = normals.resize_prediction(vectors, (4, 8), (2, 4))
    assert torch.allclose(back[2], torch.ones(2, 4))


def test_box_sanitising_never_touches_masks_or_dense_maps() -> None:
    """torchvision's SanitizeBoundingBoxes indexes every Mask by the boxes it keeps; the
    pipeline applies it to the detection targets alone, so a map whose first dimension equals
    the number of boxes keeps all its channels."""
    from torchvision import tv_tensors

    from mtl_lightning.data.transforms import eval_transforms

    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 8, 8], [4, 4, 4, 4], [1, 1, 6, 6.0]]),
                                     format="XYXY", canvas_size=(16, 16))
    sample = {
        "image": tv_tensors.Image(torch.zeros(3, 16, 16, dtype=torch.uint8)),
        "targets": {"detection": {"boxes": boxes, "labels": torch.tensor([1, 2, 3]),
                                  "iscrowd": torch.zeros(3, dtype=torch.bool)},
                    "segmentation": tv_tensors.Mask(torch.ones(16, 16, dtype=torch.uint8)),
                    "normals": NormalMap(torch.ones(3, 16, 16))},
    }
    out = eval_transforms(16, ("detection", "segmentation", "normals"))(sample)
    assert out["targets"]["detection"]["labels"].tolist() == [1, 3]  # the empty box dropped
    assert out["targets"]["normals"].shape[0] == 3
    assert out["targets"]["segmentation"].shape == (16, 16)
