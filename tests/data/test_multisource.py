"""MultiSourceDataModule: combined training batches, class reconciliation, a real fit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from PIL import Image

from mtl_lightning.data.sources.folders import DataSourceError
from mtl_lightning.data.sources.multisource import (
    MultiSourceDataModule,
    SourceBlockSampler,
    merge_batches,
)
from mtl_lightning.module import MultiTaskModule
from tests.data.test_sources import (
    voc_xml,
    write_classification_folder,
    write_segmentation_folder,
    write_voc_folder,
)

LABELS = {"seg": "segmentation", "cls": "classification", "voc": "detection"}
NO_AUGMENT = dict(hflip=0.0, scale_jitter=(1.0, 1.0), translate=0.0, color_jitter=0.0)


def _segmentation(root: Path, names: list[str], count: int = 4) -> dict[str, Any]:
    values = np.zeros((20, 24), dtype=np.uint8)
    values[4:12, 6:18] = 1
    values[14:, :] = 2
    images, masks = write_segmentation_folder(root, {f"m{i}": values for i in range(count)})
    return {"kind": "segmentation_folder", "images": str(images), "masks": str(masks),
            "class_names": names}


def _voc(root: Path, count: int = 4, class_names: list[str] | None = None) -> dict[str, Any]:
    xml = voc_xml([("cat", (2, 2, 20, 20), 0), ("dog", (15, 5, 38, 28), 0)])
    images, xml_dir = write_voc_folder(root, {f"v{i}": xml for i in range(count)})
    spec = {"kind": "voc", "images": str(images), "annotations": str(xml_dir)}
    return spec if class_names is None else {**spec, "class_names": class_names}


def _three_sources(tmp_path: Path) -> list[dict[str, Any]]:
    seg = _segmentation(tmp_path / "seg", ["background", "road", "car"])
    cls = {"kind": "classification_folder",
           "root": str(write_classification_folder(tmp_path / "cls", {"day": 2, "night": 2}))}
    voc = _voc(tmp_path / "voc")
    train = [{**seg, "name": "seg", "split": "train"}, {**cls, "name": "cls", "split": "train"},
             {**voc, "name": "voc", "split": "train"}]
    val = [{**spec, "name": f"{spec['name']}_val", "split": "val"} for spec in train]
    return train + val


class RecordBatches(Callback):
    """Keeps the has-flags and sources of every training batch the model receives."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({"has": {t: h.tolist() for t, h in batch["has"].items()},
                             "sources": [m["source"] for m in batch["meta"]],
                             "image": tuple(batch["image"].shape)})


@pytest.mark.slow
def test_fit_sees_one_batch_with_has_true_exactly_for_labelling_sources(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = MultiSourceDataModule(_three_sources(tmp_path), image_size=64, batch_size=2,
                                 num_workers=0)
    assert data.tasks == ("classification", "segmentation", "detection")
    assert data.task_info["detection"]["class_names"] == ["cat", "dog"]
    assert data.task_info["classification"]["class_names"] == ["day", "night"]
    model = MultiTaskModule(task_info=data.task_info, backbone="resnet18", neck_channels=16)
    recorder = RecordBatches()
    trainer = Trainer(max_steps=2, limit_val_batches=2, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[recorder])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 and len(recorder.batches) == 2
    for batch in recorder.batches:
        assert batch["image"] == (6, 3, 64, 64)
        assert sorted(batch["sources"]) == ["cls", "cls", "seg", "seg", "voc", "voc"]
        for task, flags in batch["has"].items():
            assert flags == [LABELS[source] == task for source in batch["sources"]]
    assert "val/mtl/loss" in trainer.callback_metrics


def test_same_names_in_another_order_are_remapped(tmp_path: Path) -> None:
    sources = [
        {**_voc(tmp_path / "a"), "name": "a", "split": "train"},
        {**_voc(tmp_path / "b", class_names=["dog", "cat"]), "name": "b", "split": "val"},
        {**_segmentation(tmp_path / "s1", ["background", "road", "car"]), "name": "s1",
         "split": "train"},
        {**_segmentation(tmp_path / "s2", ["void", "car", "road"]), "name": "s2",
         "split": "val"},
    ]
    data = MultiSourceDataModule(sources, image_size=32, num_workers=0, **NO_AUGMENT)
    assert data.task_info["detection"]["class_names"] == ["cat", "dog"]  # first source's order
    assert data.task_info["segmentation"]["class_names"] == ["background", "road", "car"]
    data.setup()
    first, second = data.source_datasets["train"]["a"][0], data.source_datasets["val"]["b"][0]
    # The readers say cat=0 (a) and cat=1 (b); the module says cat=0 for both.
    assert data.sources[1].reader[0]["targets"]["detection"]["labels"].tolist() == [1, 0]
    assert first["targets"]["detection"]["labels"].tolist() == [0, 1]
    assert second["targets"]["detection"]["labels"].tolist() == [0, 1]
    # Both folders hold the same mask files: value 1 is road in s1 but car in s2.
    ours = data.source_datasets["train"]["s1"][0]["targets"]["segmentation"]
    theirs = data.source_datasets["val"]["s2"][0]["targets"]["segmentation"]
    assert set(ours.unique().tolist()) == {0, 1, 2}
    for value, remapped in ((0, 0), (1, 2), (2, 1)):
        assert bool((theirs[ours == value] == remapped).all())


def test_different_class_names_raise_one_sentence_naming_task_sources_and_names(
    tmp_path: Path,
) -> None:
    sources = [
        {**_voc(tmp_path / "a"), "name": "pets", "split": "train"},
        {**_voc(tmp_path / "b", class_names=["cat", "dog", "cow"]), "name": "farm",
         "split": "train"},
    ]
    with pytest.raises(ValueError, match=r"Sources 'pets' and 'farm' label detection with "
                       r"different classes \(only in 'pets': \[\], only in 'farm': \['cow'\]\)"):
        MultiSourceDataModule(sources, num_workers=0)


def test_coco_source_restricted_to_some_tasks_reconciles_with_voc(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    root.mkdir()
    Image.new("RGB", (40, 30)).save(root / "x.png")
    document = {
        "images": [{"id": 1, "file_name": "x.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10],
                         "iscrowd": 0, "area": 100}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(document))
    sources = [
        {**_voc(tmp_path / "voc"), "name": "voc", "split": "train"},
        {"kind": "coco", "name": "coco", "split": "train", "annotation_file":
         str(tmp_path / "coco.json"), "image_root": str(root), "tasks": ["detection"]},
        {**_segmentation(tmp_path / "seg", ["background", "x"]), "name": "seg",
         "split": "train"},
    ]
    data = MultiSourceDataModule(sources, image_size=40, num_workers=0, **NO_AUGMENT)
    data.setup()
    sample = data.source_datasets["train"]["coco"][0]
    assert sample["has"] == {"segmentation": False, "detection": True}
    assert sample["targets"]["detection"]["labels"].tolist() == [1]  # coco dog=0 -> dog=1
    assert bool((sample["targets"]["segmentation"] == 255).all())
    assert sample["meta"]["source"] == "coco"


def test_sampling_modes_and_merge(tmp_path: Path) -> None:
    sources = [{**_voc(tmp_path / "a", count=4), "name": "a", "split": "train"},
               {**_voc(tmp_path / "b", count=2), "name": "b", "split": "train"}]
    data = MultiSourceDataModule(sources, image_size=32, batch_size=2, num_workers=0,
                                 sampling_mode="min_size")
    data.setup()
    loader = data.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    iterator = iter(loader)
    assert len(loader) == 1  # min_size: the shorter source (one batch of 2) sets the length
    batch = data.on_after_batch_transfer(next(iterator)[0], 0)
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["targets"]["detection"]) == 4
    assert [m["source"] for m in batch["meta"]] == ["a", "a", "b", "b"]
    assert torch.equal(merge_batches({"a": batch, "b": None})["has"]["detection"],
                       batch["has"]["detection"])

    data.sampling_mode = "sequential"
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, SourceBlockSampler)
    order = list(loader.sampler)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:]) == [4, 5]


def test_eval_loaders_per_source_or_concatenated(tmp_path: Path) -> None:
    sources = [{**_voc(tmp_path / "a", count=3), "name": "a", "split": "val"},
               {**_voc(tmp_path / "b", count=2), "name": "b", "split": "val"},
               {**_voc(tmp_path / "c", count=2), "name": "c", "split": "train"}]
    data = MultiSourceDataModule(sources, image_size=32, eval_batch_size=8, num_workers=0)
    data.setup()
    assert len(next(iter(data.val_dataloader()))["image"]) == 5
    data.eval_loaders = "per_source"
    assert [len(loader.dataset) for loader in data.val_dataloader()] == [3, 2]
    with pytest.raises(DataSourceError, match="no source with split 'test'"):
        data.test_dataloader()


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "yolo"}, r"data.sources\[0\] has kind 'yolo'; use one of"),
    ({"imgs": "x"}, r"unknown option\(s\) \['imgs'\]"),
    ({"split": "dev"}, r"split 'dev'"),
])
def test_bad_source_specs_raise_one_sentence(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    spec = {**_voc(tmp_path / "a", count=1), "name": "a", "split": "train", **change}
    with pytest.raises(DataSourceError, match=message):
        MultiSourceDataModule([spec], num_workers=0)


def test_a_split_missing_classes_is_a_warning_and_the_classes_are_the_union(
    tmp_path: Path,
) -> None:
    xml = {"t0": voc_xml([("carton", (2, 2, 20, 20), 0), ("can", (15, 5, 38, 28), 0)]),
           "t1": voc_xml([("milk", (2, 2, 9, 9), 0)]),
           "v0": voc_xml([("can", (1, 1, 8, 8), 0), ("jar", (3, 3, 30, 20), 0)])}
    images, annotations = write_voc_folder(tmp_path / "voc", xml)
    (tmp_path / "train.txt").write_text("t0\nt1\n")
    (tmp_path / "val.txt").write_text("v0\n")
    folder = {"kind": "voc", "images": str(images), "annotations": str(annotations)}
    sources = [{**folder, "name": "fridge", "split": "train", "ids": str(tmp_path / "train.txt")},
               {**folder, "name": "fridge_val", "split": "val", "ids": str(tmp_path / "val.txt")}]
    with pytest.warns(UserWarning) as caught:
        data = MultiSourceDataModule(sources, image_size=32, num_workers=0, **NO_AUGMENT)
    messages = [str(w.message) for w in caught]
    assert any("train sources (e.g. 'fridge')" in m and "['jar']" in m and "never learns" in m
               for m in messages)
    assert any("val sources (e.g. 'fridge_val')" in m and "['carton', 'milk']" in m
               for m in messages)
    names = data.task_info["detection"]["class_names"]
    assert names == ["can", "carton", "milk", "jar"]  # train's order, then val's extra class
    data.setup()
    val = data.source_datasets["val"]["fridge_val"][0]["targets"]["detection"]["labels"]
    assert [names[i] for i in val.tolist()] == ["can", "jar"]
    # The fix the warning names: one class list for both splits, and no warning.
    fixed = [{**s, "class_names": ["can", "carton", "jar", "milk"]} for s in sources]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = MultiSourceDataModule(fixed, num_workers=0)
    assert data.task_info["detection"]["class_names"] == ["can", "carton", "jar", "milk"]


def test_sources_without_background_are_matched_by_name_from_index_zero(
    tmp_path: Path,
) -> None:
    def camvid(name: str, class_names: list[str], split: str) -> dict[str, Any]:
        spec = _segmentation(tmp_path / name, [*class_names, "void"])
        return {**spec, "name": name, "split": split, "background_index": None,
                "ignore_index": 3}

    sources = [camvid("a", ["sky", "road", "car"], "train"),
               camvid("b", ["road", "sky", "car"], "val")]
    data = MultiSourceDataModule(sources, image_size=24, num_workers=0, **NO_AUGMENT)
    assert data.task_info["segmentation"]["class_names"] == ["sky", "road", "car"]
    data.setup()
    ours = data.source_datasets["train"]["a"][0]["targets"]["segmentation"]
    theirs = data.source_datasets["val"]["b"][0]["targets"]["segmentation"]
    # The same mask file: value 0 is sky in a but road in b, value 1 the other way round.
    for value, remapped in ((0, 1), (1, 0), (2, 2)):
        assert bool((theirs[ours == value] == remapped).all())
    mixed = [sources[0], {**_segmentation(tmp_path / "c", ["background", "sky", "road", "car"]),
                          "name": "c", "split": "val"}]
    with pytest.raises(DataSourceError, match=r"\['c'\] have a background class and \['a'\]"):
        MultiSourceDataModule(mixed, num_workers=0)


def test_cache_samples_with_sources_and_meta_names_every_sample(tmp_path: Path) -> None:
    sources = _three_sources(tmp_path)
    plain = MultiSourceDataModule(sources, image_size=32, num_workers=0, batch_size=4,
                                  **NO_AUGMENT)
    cached = MultiSourceDataModule(sources, image_size=32, num_workers=0, batch_size=4,
                                   cache_samples=True, **NO_AUGMENT)
    for data in (plain, cached):
        data.setup()
    batches = [list(data.val_dataloader()) for data in (plain, cached)]
    assert all(d._cache is not None for d in cached.source_datasets["val"].values())
    assert all(d._cache is None for d in cached.source_datasets["train"].values())
    for first, second in zip(*batches, strict=True):
        assert torch.equal(first["image"], second["image"])
        assert torch.equal(first["targets"]["segmentation"], second["targets"]["segmentation"])
    names = [(m["source"], m["image_id"]) for b in batches[1] for m in b["meta"]]
    assert len(set(names)) == len(names) == 12  # image ids repeat across sources, names don't
    assert {source for source, _ in names} == {"seg_val", "cls_val", "voc_val"}
