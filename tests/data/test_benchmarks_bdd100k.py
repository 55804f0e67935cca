"""BDD100K in YOLOP's layout: fabricated frames, per-frame JSON labels and mask PNGs are read
into the detection, drivable and lanes instances (YOLOP's single vehicle class), letterboxed
into a rectangle with the boxes, and refused with one sentence naming a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lightning.data.benchmarks import BDD100KDataModule
from mtl_lightning.data.benchmarks.synthetic import write_bdd100k
from mtl_lightning.shared.errors import DataError

H, W = 72, 128


@pytest.fixture
def bdd(tmp_path: Path) -> Path:
    return write_bdd100k(tmp_path / "bdd100k", {"train": 2, "val": 2}, size=(H, W))


def data(root: Path, **options) -> BDD100KDataModule:
    options = {"image_size": (40, 64), "batch_size": 2, "num_workers": 0, **options}
    return BDD100KDataModule(root=str(root), **options)


def test_yolop_vehicle_class_merges_car_bus_truck_and_train(bdd: Path) -> None:
    module = data(bdd)
    info = module.task_info
    assert info["detection"]["class_names"] == ["vehicle"]
    assert info["drivable"]["type"] == info["lanes"]["type"] == "segmentation"
    dataset = module.build_dataset("train")
    name = dataset.ids[0]
    label = json.loads((bdd / "det_annotations" / "train" / f"{name}.json").read_text())
    kept = [o["box2d"] for o in label["frames"][0]["objects"]
            if o.get("category") in ("car", "bus", "truck", "train")]
    target = dataset[0]["targets"]["detection"]
    assert len(kept) == 6 and target["labels"].tolist() == [0] * 6  # persons, signs, lanes out
    expected = torch.tensor([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in kept])
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor),
                          expected.clamp(min=0).minimum(torch.tensor([W, H, W, H])))
    two = data(bdd, detection_classes={"car": ["car"], "large": ["bus", "truck"]})
    labels = two.build_dataset("train")[0]["targets"]["detection"]["labels"].tolist()
    assert sorted(set(labels)) == [0, 1] and len(labels) == 6


def test_masks_use_yolops_threshold(bdd: Path) -> None:
    dataset = data(bdd).build_dataset("val")
    name = dataset.ids[0]
    path = bdd / "ll_seg_annotations" / "val" / f"{name}.png"
    grey = np.zeros((H, W), dtype=np.uint8)
    grey[:, :10] = 1  # grey level 1 is background (YOLOP: above 1 is foreground)
    grey[:, 10:20] = 2
    Image.fromarray(grey).save(path)
    lanes = dataset[0]["targets"]["lanes"].numpy()
    assert (lanes[:, :10] == 0).all() and (lanes[:, 10:20] == 1).all()


def test_letterbox_into_a_rectangle_keeps_boxes_on_their_objects(bdd: Path) -> None:
    module = data(bdd)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].shape == (2, 3, 40, 64)
    assert batch["meta"][0]["content_size"] == (36, 64)  # 72 x 128 scaled by 0.5
    assert bool((batch["targets"]["drivable"][:, 36:] == 255).all())  # padding: ignore
    raw = module.build_dataset("val")[0]["targets"]["detection"]["boxes"]
    assert torch.allclose(batch["targets"]["detection"][0]["boxes"],
                          raw.as_subclass(torch.Tensor) / 2, atol=1e-4)


def test_bad_label_files_are_named(bdd: Path) -> None:
    module = data(bdd)
    name = module.split_ids("train")[1]
    path = bdd / "det_annotations" / "train" / f"{name}.json"
    path.write_text(json.dumps({"name": name, "frames": [{"objects": [
        {"category": "car", "box2d": {"x1": 10, "y1": 5, "x2": 2, "y2": 9}}]}]}))
    with pytest.raises(DataError, match=rf"{name}\.json' object 0 has box2d .*x1 <= x2"):
        module.build_dataset("train")[1]
    path.write_text(json.dumps({"name": name}))
    assert any(f"{name}.json' has no frames[0].objects" in p for p in module.check_files())
    (bdd / "da_seg_annotations" / "val" / f"{module.split_ids('val')[0]}.png").unlink()
    with pytest.raises(DataError, match=r"1 of 2 val samples have no drivable file"):
        module.build_dataset("val")
