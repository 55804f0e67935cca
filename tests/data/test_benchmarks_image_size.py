"""``image_size`` as ``[height, width]``: the protocols' rectangular inputs (288 x 384 for
NYUv2, 384 x 640 for BDD100K), stretched or letterboxed, with every target moved along and
padding that means "no label" for each kind of target."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from mtl_lightning.data.transforms import content_size, eval_transforms, size_hw
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap


def sample(height: int, width: int) -> dict:
    return {
        "image": tv_tensors.Image(torch.full((3, height, width), 200, dtype=torch.uint8)),
        "targets": {
            "segmentation": tv_tensors.Mask(torch.ones(height, width, dtype=torch.uint8)),
            "depth": DepthMap(torch.full((1, height, width), 3.0)),
            "normals": NormalMap(torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(
                3, height, width).clone()),
            "detection": {"boxes": tv_tensors.BoundingBoxes(
                torch.tensor([[100.0, 200.0, 300.0, 400.0]]), format="XYXY",
                canvas_size=(height, width)), "labels": torch.tensor([0])},
        },
        "meta": {},
    }


def test_a_rectangle_letterboxes_like_yolop_and_pads_with_no_label() -> None:
    tasks = ("segmentation", "depth", "normals", "detection")
    out = eval_transforms((384, 640), tasks, "letterbox")(sample(720, 1280))
    assert out["image"].shape == (3, 384, 640)
    assert out["meta"]["content_size"] == (360, 640) == content_size((720, 1280), (384, 640),
                                                                     "letterbox")
    targets = out["targets"]
    assert float(out["image"][:, 360:].abs().max()) == 0.0
    assert bool((targets["segmentation"][360:] == 255).all())  # ignore
    assert bool((targets["segmentation"][:360] == 1).all())
    assert float(targets["depth"][:, 360:].abs().max()) == 0.0  # no ground truth, not 255 m
    assert float(targets["normals"][:, 360:].abs().max()) == 0.0
    assert torch.allclose(targets["depth"][:, :360], torch.tensor(3.0))
    assert targets["detection"]["boxes"].tolist() == [[50.0, 100.0, 150.0, 200.0]]


def test_a_square_letterbox_pads_depth_and_normals_with_zero() -> None:
    out = eval_transforms(64, ("depth", "normals"), "letterbox")(sample(32, 64))
    assert out["meta"]["content_size"] == (32, 64)
    assert float(out["targets"]["depth"][:, 32:].abs().max()) == 0.0
    assert float(out["targets"]["normals"][:, 32:].abs().max()) == 0.0


def test_a_rectangle_stretches_to_height_by_width() -> None:
    out = eval_transforms([288, 384], ("segmentation", "depth"), "stretch")(sample(100, 50))
    assert out["image"].shape == (3, 288, 384)
    assert out["targets"]["depth"].shape == (1, 288, 384)
    assert size_hw(96) == (96, 96)
    with pytest.raises(ValueError, match=r"data.image_size must be an int or \[height, width\]"):
        size_hw((1, 2, 3))

