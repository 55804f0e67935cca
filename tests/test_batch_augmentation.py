"""Batched augmentation (data.batch_augmentation): exact geometry on hand-made batches, and the
same distributions of boxes, masks and pixels as the per-sample torchvision path."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torchvision import tv_tensors

from mtl_lightning.data import ScenesDataModule
from mtl_lightning.data.batch_augmentation import BatchAugmentation, worker_transforms
from mtl_lightning.data.collate import TargetList, collate_multitask
from mtl_lightning.data.transforms import IGNORE_INDEX, train_transforms
from tests.conftest import TINY_SCENES

H, W = 48, 64


@pytest.fixture(autouse=True)
def _one_thread(_few_threads: None) -> None:
    """Batches of a few small images: one thread, so a loaded machine's spinning OpenMP
    threads do not multiply the time of every tiny operation."""
    torch.set_num_threads(1)

FLIP_ONLY = dict(hflip=1.0, scale=(1.0, 1.0), translate=0.0, color_jitter=0.0)


def _batch(size: int, boxes: list[list[list[float]]], labels: list[list[int]] | None = None,
           ) -> dict:
    """A batch of ``size`` random images whose segmentation mask paints each box with its
    label, plus a detection target, a normal map and a depth map."""
    labels = labels or [list(range(1, len(b) + 1)) for b in boxes]
    mask = torch.zeros(size, H, W, dtype=torch.uint8)
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
        for (x1, y1, x2, y2), label in zip(image_boxes, image_labels):
            mask[i, int(y1):int(y2), int(x1):int(x2)] = label
    detection = TargetList(
        {"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor(lab, dtype=torch.long),
         "iscrowd": torch.zeros(len(b), dtype=torch.bool)} for b, lab in zip(boxes, labels))
    normals = torch.zeros(size, 3, H, W)
    normals[:, 0] = 0.6
    normals[:, 2] = 0.8
    return {"image": torch.rand(size, 3, H, W),
            "targets": {"segmentation": mask, "detection": detection, "normals": normals,
                        "depth": torch.full((size, 1, H, W), 2.0),
                        "classification": torch.arange(size)},
            "has": {"segmentation": torch.ones(size, dtype=torch.bool)},
            "meta": [{"image_id": i} for i in range(size)]}


def test_flip_moves_image_mask_boxes_and_normals_together() -> None:
    batch = _batch(2, [[[2.0, 4.0, 12.0, 20.0]], [[30.0, 10.0, 40.0, 30.0]]])
    out = BatchAugmentation(**FLIP_ONLY)(batch)
    assert torch.equal(out["image"], batch["image"].flip(-1))
    assert torch.equal(out["targets"]["segmentation"], batch["targets"]["segmentation"].flip(-1))
    assert out["targets"]["detection"][0]["boxes"].tolist() == [[W - 12.0, 4.0, W - 2.0, 20.0]]
    assert out["targets"]["detection"][1]["boxes"].tolist() == [[W - 40.0, 10.0, W - 30.0, 30.0]]
    assert torch.allclose(out["targets"]["normals"][:, 0], torch.tensor(-0.6))
    assert torch.equal(out["targets"]["classification"], batch["targets"]["classification"])
    assert out["meta"] == batch["meta"] and out["has"] is batch["has"]


def test_each_image_draws_its_own_flip_and_its_targets_follow() -> None:
    torch.manual_seed(0)
    size = 64
    batch = _batch(size, [[[2.0, 4.0, 12.0, 20.0]]] * size)
    out = BatchAugmentation(hflip=0.5, scale=(1.0, 1.0), translate=0.0, color_jitter=0.0)(batch)
    flipped = [torch.equal(out["image"][i], batch["image"][i].flip(-1)) for i in range(size)]
    assert 0 < sum(flipped) < size  # per image, not one draw for the batch
    for i, was_flipped in enumerate(flipped):
        source = batch["image"][i].flip(-1) if was_flipped else batch["image"][i]
        assert torch.equal(out["image"][i], source)
        mask = batch["targets"]["segmentation"][i]
        assert torch.equal(out["targets"]["segmentation"][i],
                           mask.flip(-1) if was_flipped else mask)
        x1 = out["targets"]["detection"][i]["boxes"][0, 0].item()
        assert x1 == (W - 12.0 if was_flipped else 2.0)
        assert out["targets"]["normals"][i, 0, 0, 0].item() == pytest.approx(
            -0.6 if was_flipped else 0.6)


def test_affine_keeps_boxes_inside_labels_aligned_and_fills_the_border() -> None:
    torch.manual_seed(1)
    size = 32
    boxes = [[[4.0, 4.0, 20.0, 18.0], [30.0, 20.0, 50.0, 40.0], [54.0, 2.0, 62.0, 12.0]]] * size
    labels = [[3, 1, 2]] * size
    batch = _batch(size, boxes, labels)
    out = BatchAugmentation(hflip=0.5, scale=(0.6, 1.4), translate=0.3,
                            color_jitter=0.0)(batch)
    mask = out["targets"]["segmentation"]
    dropped = 0
    for i, target in enumerate(out["targets"]["detection"]):
        kept = target["boxes"]
        assert len(kept) == len(target["labels"]) == len(target["iscrowd"])
        dropped += 3 - len(kept)
        assert (kept >= 0).all() and (kept[:, 2] <= W).all() and (kept[:, 3] <= H).all()
        assert ((kept[:, 2] - kept[:, 0]) >= 1).all() and ((kept[:, 3] - kept[:, 1]) >= 1).all()
        for (x1, y1, x2, y2), label in zip(kept.tolist(), target["labels"].tolist()):
            inner = mask[i, math.ceil(y1):math.floor(y2), math.ceil(x1):math.floor(x2)]
            if inner.numel() >= 4:  # the box still covers its own object in the mask
                assert (inner == label).float().mean() > 0.8, (i, label)
    assert dropped > 0  # some boxes were pushed out of the image, with their labels
    uncovered = mask == IGNORE_INDEX
    assert uncovered.any()  # the shift uncovered a border, marked ignore
    # Black there (the bilinear image and the nearest mask may differ on the edge pixels).
    assert ((out["image"].sum(dim=1) == 0) == uncovered).float().mean() > 0.97
    assert torch.equal(out["targets"]["depth"][:, 0] == 0, uncovered)  # no ground truth
    assert torch.equal((out["targets"]["normals"] == 0).all(dim=1), uncovered)


def test_images_without_boxes() -> None:
    batch = _batch(3, [[], [[10.0, 10.0, 20.0, 20.0]], []])
    out = BatchAugmentation()(batch)
    assert [len(t["boxes"]) for t in out["targets"]["detection"]][0::2] == [0, 0]
    none = _batch(2, [[], []])
    out = BatchAugmentation()(none)
    assert [t["boxes"].shape for t in out["targets"]["detection"]] == [(0, 4), (0, 4)]
    assert out["targets"]["detection"][0]["labels"].dtype == torch.long


def test_colour_jitter_changes_each_image_differently_and_stays_in_range() -> None:
    torch.manual_seed(2)
    batch = _batch(8, [[]] * 8)
    batch["image"] = batch["image"][:1].expand(8, -1, -1, -1).clone()
    out = BatchAugmentation(hflip=0.0, scale=(1.0, 1.0), translate=0.0, color_jitter=0.4)(batch)
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    means = out["image"].mean(dim=(1, 2, 3))
    assert len(set(means.tolist())) == 8
    assert torch.equal(out["targets"]["segmentation"], batch["targets"]["segmentation"])


# Distributions: the same sample augmented N times by each path.

N = 400
AUGMENT = dict(hflip=0.5, scale=(0.8, 1.2), translate=0.1, color_jitter=0.2)


def _sample() -> dict:
    image = torch.full((3, H, W), 120, dtype=torch.uint8)
    image[:, 8:24, 6:22] = 250
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[8:24, 6:22] = 1
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[6.0, 8.0, 22.0, 24.0]]), format="XYXY",
                                     canvas_size=(H, W))
    return {"image": tv_tensors.Image(image),
            "targets": {"segmentation": tv_tensors.Mask(mask),
                        "detection": {"boxes": boxes, "labels": torch.tensor([1]),
                                      "iscrowd": torch.tensor([False])}},
            "has": {"segmentation": True, "detection": True}, "meta": {}}


def _statistics(images: torch.Tensor, masks: torch.Tensor,
                detections: list[dict]) -> dict[str, torch.Tensor]:
    """Per-sample values whose means (and variances) the two paths must share."""
    boxes = torch.stack([d["boxes"][0] for d in detections]).double()
    return {
        "flipped": ((boxes[:, 0] + boxes[:, 2]) / 2 > W / 2).double(),
        "centre_x": (boxes[:, 0] + boxes[:, 2]) / 2,
        "centre_y": (boxes[:, 1] + boxes[:, 3]) / 2,
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "foreground": (masks == 1).double().mean(dim=(1, 2)),
        "ignored": (masks == IGNORE_INDEX).double().mean(dim=(1, 2)),
        "brightness": images.double().mean(dim=(1, 2, 3)),
    }


def _per_sample_path() -> dict[str, torch.Tensor]:
    transform = train_transforms((H, W), ("segmentation", "detection"), **_as_options())
    batch = collate_multitask([transform(_sample()) for _ in range(N)])
    return _statistics(batch["image"], batch["targets"]["segmentation"],
                       batch["targets"]["detection"])


def _batched_path() -> dict[str, torch.Tensor]:
    transform = worker_transforms((H, W))
    augment = BatchAugmentation(**AUGMENT)
    parts = [augment(collate_multitask([transform(_sample()) for _ in range(50)]))
             for _ in range(N // 50)]
    return _statistics(torch.cat([p["image"] for p in parts]),
                       torch.cat([p["targets"]["segmentation"] for p in parts]),
                       [d for p in parts for d in p["targets"]["detection"]])


def _as_options() -> dict:
    return {"hflip": AUGMENT["hflip"], "scale": AUGMENT["scale"],
            "translate": AUGMENT["translate"], "color_jitter": AUGMENT["color_jitter"]}


def test_both_paths_give_the_same_distributions() -> None:
    """Means and variances agree within 4.5 standard errors of their difference.

    For independent samples of size N the difference of two means has variance
    var_a / N + var_b / N; the difference of two sample variances has variance about
    (m4_a - var_a^2) / N + (m4_b - var_b^2) / N (m4: the fourth central moment), which holds
    for any distribution, so it needs no normality. 4.5 standard errors: a false alarm about
    once in 150,000 comparisons, each of 14 here.
    """
    torch.manual_seed(3)
    reference, batched = _per_sample_path(), _batched_path()
    for name in reference:
        a, b = reference[name], batched[name]
        assert a.std() > 0 and b.std() > 0, name  # every statistic varies under augmentation
        va, vb = a.var(), b.var()
        bound = 4.5 * math.sqrt((va + vb) / N)
        assert abs(a.mean() - b.mean()) <= bound, (name, a.mean(), b.mean(), bound)
        m4a, m4b = ((a - a.mean()) ** 4).mean(), ((b - b.mean()) ** 4).mean()
        bound = 4.5 * math.sqrt(max(m4a - va**2, 0) / N + max(m4b - vb**2, 0) / N)
        assert abs(va - vb) <= bound, (name, va, vb, bound)


# The data module's hook.

def test_data_module_augments_training_batches_only(scenes_root) -> None:
    data = ScenesDataModule(root=str(scenes_root), batch_augmentation=True, hflip=1.0,
                            scale_jitter=(1.0, 1.0), translate=0.0, color_jitter=0.0,
                            **TINY_SCENES)
    data.prepare_data()
    data.setup()
    batch = next(iter(data.train_dataloader()))
    data.trainer = SimpleNamespace(training=True)
    out = data.on_after_batch_transfer(batch, 0)
    assert torch.equal(out["image"], batch["image"].flip(-1))
    assert torch.equal(out["targets"]["segmentation"],
                       batch["targets"]["segmentation"].flip(-1))
    data.trainer = SimpleNamespace(training=False)  # validation inside fit: untouched
    assert data.on_after_batch_transfer(batch, 0) is batch
    assert batch["image"].dtype == torch.float32 and batch["image"].max() <= 1.0
