"""The aspect-preserving resize (``data.resize: letterbox``) and the exact way back: boxes and
masks of a known object, carried to the model input and predicted there perfectly, land on
their original pixels in ``predict``'s output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchvision import tv_tensors
from torchvision.transforms import v2

from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.transforms import eval_transforms, train_transforms
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import build_task

REPO = Path(__file__).resolve().parents[2]
SIZE = 128
BOX = (123.0, 57.0, 420.0, 301.0)  # x1, y1, x2, y2 in the original photo


def _photo(height: int, width: int) -> dict:
    mask = torch.zeros(height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    mask[y1:y2, x1:x2] = 1
    return {
        "image": tv_tensors.Image(torch.full((3, height, width), 200, dtype=torch.uint8)),
        "targets": {
            "segmentation": tv_tensors.Mask(mask),
            "detection": {"boxes": tv_tensors.BoundingBoxes(torch.tensor([BOX]), format="XYXY",
                                                            canvas_size=(height, width)),
                          "labels": torch.tensor([0])},
        },
        "has": {"segmentation": True, "detection": True},
        "meta": {"image_id": 1, "orig_size": (height, width)},
    }


@pytest.mark.parametrize("shape", [(601, 803), (803, 601)])
def test_letterbox_keeps_the_aspect_ratio_and_pads_with_ignore(shape: tuple[int, int]) -> None:
    sample = eval_transforms(SIZE, ("segmentation", "detection"), "letterbox")(_photo(*shape))
    assert sample["image"].shape == (3, SIZE, SIZE)
    height, width = sample["meta"]["content_size"]
    assert max(height, width) == SIZE
    assert width / height == pytest.approx(shape[1] / shape[0], rel=0.01)
    mask = sample["targets"]["segmentation"]
    assert bool((mask[height:] == 255).all()) and bool((mask[:, width:] == 255).all())
    image = sample["image"]
    padding = torch.cat([image[:, height:].flatten(1), image[:, :, width:].flatten(1)], 1)
    black = padding[:, :1]
    assert bool((padding == black).all())  # black (normalised or not) below and right ...
    assert bool((image[:, 0, 0] > black[:, 0]).all())  # ... the photo starts at the corner
    assert "content_size" not in train_transforms(SIZE, ("segmentation",), resize="letterbox")(
        _photo(*shape))["meta"]


def test_stretch_is_still_available_and_fills_the_input() -> None:
    from mtl_lightning.data.transforms import content_size

    sample = eval_transforms(SIZE, ("segmentation",), "stretch")(_photo(601, 803))
    assert sample["meta"]["content_size"] == (SIZE, SIZE)
    resized = v2.Resize(size=None, max_size=SIZE)(_photo(601, 803)["image"])
    assert content_size((601, 803), SIZE, "letterbox") == tuple(resized.shape[-2:])
    with pytest.raises(ValueError, match=r"data\.resize must be one of"):
        eval_transforms(SIZE, (), "squash")


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_predictions_map_back_to_the_original_pixels(resize: str, monkeypatch) -> None:
    """A model that predicts the transformed ground truth exactly: predict_step's output must
    be the original box (to float precision) and the original mask (up to resampling at its
    border)."""
    height, width = 601, 803
    sample = eval_transforms(SIZE, ("segmentation", "detection"), resize)(_photo(height, width))
    batch = collate_multitask([sample])
    info = {"segmentation": {"num_classes": 2}, "detection": {"num_classes": 1}}
    model = MultiTaskModule(task_info=info, backbone="test_resnet", neck_channels=8)
    truth = batch["targets"]
    perfect = [{"segmentation": truth["segmentation"][0].long(),
                "detection": {**truth["detection"][0], "scores": torch.ones(1)}}]
    monkeypatch.setattr(model, "predict_tasks", lambda image: perfect)
    result = model.predict_step(batch, 0)[0]["predictions"]
    torch.testing.assert_close(result["detection"]["boxes"], torch.tensor([BOX]),
                               atol=1e-3, rtol=0)
    mask = result["segmentation"]
    assert mask.shape == (height, width)
    original = _photo(height, width)["targets"]["segmentation"].bool()
    predicted = mask.bool()
    iou = (predicted & original).sum() / (predicted | original).sum()
    assert float(iou) > 0.95
    # Each edge within one model-input pixel (the resampling step) of the original edge.
    step = max(height, width) / SIZE
    rows, columns = predicted.any(1).nonzero(), predicted.any(0).nonzero()
    assert abs(int(rows[0]) - BOX[1]) <= step and abs(int(rows[-1]) + 1 - BOX[3]) <= step
    assert abs(int(columns[0]) - BOX[0]) <= step and abs(int(columns[-1]) + 1 - BOX[2]) <= step


def test_predicted_boxes_are_clipped_to_the_original_image() -> None:
    task = build_task("detection", {}, {"num_classes": 1})
    prediction = {"boxes": torch.tensor([[-10.0, -54.0, 140.0, 90.0]]),
                  "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}
    mapped = task.resize_prediction(prediction, (96, 128), (600, 800))
    torch.testing.assert_close(mapped["boxes"], torch.tensor([[0.0, 0.0, 800.0, 562.5]]))


def test_the_coco_config_letterboxes_by_default() -> None:
    config = yaml.safe_load((REPO / "configs" / "data" / "coco.yaml").read_text())
    assert config["init_args"]["resize"] == "letterbox"
