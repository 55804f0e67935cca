"""Named task instances: two tasks of one type in one model, types from the config or the
data, task classes by import path, and a data side keyed by instance name."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.sources.folders import DataSourceError, placeholder_target
from mtl_lightning.data.transforms import eval_transforms
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import (
    TASKS,
    SegmentationTask,
    UnknownTaskError,
    build_task,
    task_class,
    trained_tasks,
    type_name,
)

from .external_foreground import ForegroundTask

ROAD = {"drivable": {"type": "segmentation", "num_classes": 2,
                     "class_names": ["background", "drivable"]},
        "lanes": {"type": "segmentation", "num_classes": 3,
                  "class_names": ["background", "solid", "dashed"]}}


def test_types_resolve_from_the_option_the_class_path_the_data_or_the_name() -> None:
    assert type_name("drivable", {"type": "segmentation"}) == "segmentation"
    assert type_name("drivable", None, {"type": "segmentation"}) == "segmentation"
    assert type_name("classification") == "classification"
    path = "tests.tasks.external_foreground.ForegroundTask"
    assert type_name("fg", {"class_path": path}) == path
    assert task_class(path) is ForegroundTask and task_class("segmentation") is SegmentationTask
    assert ForegroundTask.type_name == path  # an unregistered class: its import path
    assert all(cls.type_name == key for key, cls in TASKS.items())
    with pytest.raises(UnknownTaskError, match=r"Cannot import the task class 'nowhere\.Task'"):
        task_class("nowhere.Task")
    with pytest.raises(UnknownTaskError, match=r"not a subclass of mtl_lightning\.tasks\.Task"):
        task_class("torch.nn.Linear")
    with pytest.raises(ValueError, match="both type and class_path"):
        type_name("x", {"type": "segmentation", "class_path": path})


def test_two_segmentation_instances_train_with_their_own_targets_and_metrics() -> None:
    model = MultiTaskModule(task_info=ROAD, neck_channels=16)
    assert list(model.tasks) == ["drivable", "lanes"]
    for name, info in ROAD.items():
        task = model.tasks[name]
        assert isinstance(task, SegmentationTask) and task.name == name
        assert task.type_name == "segmentation" and task.num_classes == info["num_classes"]
    assert {"val_drivable", "val_lanes", "train_lanes"} <= set(model.metrics)
    lanes = torch.zeros(2, 64, 64, dtype=torch.long)
    lanes[:, 30:34] = 2
    batch = {"image": torch.rand(2, 3, 64, 64),
             "targets": {"drivable": torch.ones(2, 64, 64, dtype=torch.long), "lanes": lanes},
             "has": {"drivable": torch.tensor([True, False]), "lanes": torch.tensor([True, True])}}
    losses, counts = model._task_losses(batch, "val")
    assert set(losses) == {"drivable", "lanes"}
    assert counts == {"drivable": 1, "lanes": 2}
    losses["lanes"].backward()  # each instance has its own head: lanes' loss reaches only it
    assert model.tasks["drivable"].classifier[-1].weight.grad is None
    assert model.tasks["lanes"].classifier[-1].weight.grad is not None
    miou = model.tasks["lanes"].compute_metrics(model.metrics["val_lanes"])["miou"]
    assert 0.0 <= float(miou) <= 1.0


def test_type_in_the_config_names_an_instance_the_data_has_no_type_for() -> None:
    info = {"drivable": {"num_classes": 2}}
    task = build_task("drivable", {"type": "segmentation"}, info["drivable"],
                      labelled=list(info))
    assert isinstance(task, SegmentationTask) and task.name == "drivable"
    with pytest.raises(ValueError, match="has type detection but the data labels 'drivable' "
                                         "as segmentation"):
        build_task("drivable", {"type": "detection"}, ROAD["drivable"], labelled=list(ROAD))
    with pytest.raises(UnknownTaskError, match="Unknown task type 'drivable'"):
        build_task("drivable", None, {"num_classes": 2}, labelled=["drivable"])


def test_class_path_with_init_args_builds_an_outside_task_deriving_from_the_one_source() -> None:
    path = "tests.tasks.external_foreground.ForegroundTask"
    task = build_task("fg", {"class_path": path, "init_args": {"head_channels": 8}}, None,
                      labelled=["semseg", "classification"],
                      task_info={"semseg": {"type": "segmentation"}, "classification": {}})
    assert isinstance(task, ForegroundTask) and task.head_channels == 8 and task.name == "fg"
    assert task.source == "semseg"
    # two segmentation instances in the data: the source must be named
    with pytest.raises(ValueError, match=r"several: drivable, lanes, semseg.*fg\.source"):
        build_task("fg", {"class_path": path}, None, labelled=list(ROAD),
                   task_info={**ROAD, "semseg": {"type": "segmentation"}})
    chosen = build_task("fg", {"class_path": path, "source": "lanes"}, None,
                        labelled=list(ROAD), task_info=ROAD)
    assert chosen.source == "lanes"
    default = build_task("fg", {"class_path": path}, None, labelled=["segmentation"],
                         task_info={"segmentation": {"num_classes": 3}})
    assert default.source == "segmentation"


def test_task_options_apply_by_type_and_by_instance_name() -> None:
    trained = trained_tasks(None, ROAD, {"segmentation": {"decoder_channels": 8},
                                         "lanes": {"decoder_channels": 4}})
    assert trained == {"drivable": {"decoder_channels": 8}, "lanes": {"decoder_channels": 4}}
    with pytest.raises(UnknownTaskError, match="names unknown task"):
        trained_tasks(None, ROAD, {"keypoints": {}})


def test_placeholders_come_from_the_task_types() -> None:
    assert int(placeholder_target("classification", 4, 5)) == -1
    mask = placeholder_target("segmentation", 4, 5)
    assert isinstance(mask, tv_tensors.Mask) and mask.shape == (4, 5) and (mask == 255).all()
    assert placeholder_target("detection", 4, 5)["boxes"].canvas_size == (4, 5)
    assert placeholder_target("depth", 4, 5).shape == (1, 4, 5)
    normals = placeholder_target("normals", 4, 5)
    assert normals.shape == (3, 4, 5) and not normals.any()
    with pytest.raises(DataSourceError, match="No placeholder target for task type 'edges'"):
        placeholder_target("edges", 4, 5)


def test_transforms_and_collation_treat_targets_by_their_type_not_their_name() -> None:
    """Box targets of any instance name are sanitised (a degenerate box dropped with its
    label), masks of two instances resized alike."""
    samples = []
    for i in range(2):
        boxes = tv_tensors.BoundingBoxes(torch.tensor([[2.0, 2, 20, 20], [5, 5, 5, 9]]),
                                         format="XYXY", canvas_size=(32, 32))
        samples.append(eval_transforms(16, ())({
            "image": tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8)),
            "targets": {"cars": {"boxes": boxes, "labels": torch.tensor([1, 2]),
                                 "track": torch.tensor([7, 8])},
                        "drivable": tv_tensors.Mask(torch.ones(32, 32, dtype=torch.uint8)),
                        "lanes": placeholder_target("segmentation", 32, 32)},
            "has": {"cars": True, "drivable": True, "lanes": i == 0},
            "meta": {"image_id": i}}))
    batch = collate_multitask(samples)
    cars = batch["targets"]["cars"]
    assert [len(c["boxes"]) for c in cars] == [1, 1]
    assert cars[0]["labels"].tolist() == [1] and cars[0]["track"].tolist() == [7]
    assert cars[0]["boxes"].tolist() == [[1.0, 1.0, 10.0, 10.0]]
    assert batch["targets"]["drivable"].shape == batch["targets"]["lanes"].shape == (2, 16, 16)
    assert batch["has"]["lanes"].tolist() == [True, False]
