"""Single-task readers: targets, has-flags and placeholders in the COCO dataset's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.sources.folders import (
    ClassificationFolder,
    DataSourceError,
    SegmentationFolder,
    VocDetectionFolder,
)
from mtl_lightning.data.transforms import eval_transforms, train_transforms

TASKS = ("classification", "segmentation", "detection")


def write_segmentation_folder(
    root: Path, masks: dict[str, np.ndarray], palette: bool = True
) -> tuple[Path, Path]:
    """``root/images/NAME.png`` (RGB, mask-sized) and ``root/masks/NAME.png`` index masks."""
    images, mask_dir = root / "images", root / "masks"
    images.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for name, values in masks.items():
        height, width = values.shape
        Image.new("RGB", (width, height), (40, 80, 120)).save(images / f"{name}.png")
        picture = Image.new("P" if palette else "L", (width, height))
        picture.putdata(values.astype(np.uint8).flatten().tolist())
        if palette:  # colours unrelated to the indices, as in VOC's palette PNGs
            picture.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        picture.save(mask_dir / f"{name}.png")
    return images, mask_dir


def write_classification_folder(root: Path, counts: dict[str, int], size: int = 24) -> Path:
    """``root/CLASS/i.jpg`` with ``counts[CLASS]`` images each."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (size + 8, size), (10 * i, 50, 90)).save(root / name / f"{i}.jpg")
    return root


def voc_xml(objects: list[tuple[str, tuple[float, float, float, float], int]]) -> str:
    """A Pascal VOC annotation with ``(name, (xmin, ymin, xmax, ymax), difficult)`` objects."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
        "</bndbox></object>"
        for name, box, difficult in objects
    )
    return f"<annotation><size><width>40</width><height>30</height></size>{body}</annotation>"


def write_voc_folder(root: Path, annotations: dict[str, str]) -> tuple[Path, Path]:
    """``root/JPEGImages/NAME.jpg`` (40x30) and ``root/Annotations/NAME.xml``."""
    images, xml_dir = root / "JPEGImages", root / "Annotations"
    images.mkdir(parents=True)
    xml_dir.mkdir(parents=True)
    for name, text in annotations.items():
        Image.new("RGB", (40, 30), (200, 100, 0)).save(images / f"{name}.jpg")
        (xml_dir / f"{name}.xml").write_text(text)
    return images, xml_dir


def _check_placeholders(sample: dict, labelled: str, height: int, width: int) -> None:
    assert sample["has"] == {task: task == labelled for task in TASKS}
    targets = sample["targets"]
    if labelled != "classification":
        assert int(targets["classification"]) == -1
    if labelled != "segmentation":
        mask = targets["segmentation"]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.uint8
        assert mask.shape == (height, width) and bool((mask == 255).all())
    if labelled != "detection":
        assert targets["detection"]["boxes"].shape == (0, 4)
        assert targets["detection"]["labels"].dtype == torch.int64
        assert targets["detection"]["labels"].numel() == 0


def test_segmentation_folder_keeps_index_values_and_fills_other_tasks(tmp_path: Path) -> None:
    values = np.zeros((12, 16), dtype=np.uint8)
    values[2:5, 3:9] = 1
    values[6:, :4] = 2
    values[0, :] = 255
    images, masks = write_segmentation_folder(tmp_path, {"a": values, "b": values.T.copy()})
    reader = SegmentationFolder(str(images), str(masks), ["background", "road", "car"])
    assert reader.tasks == ("segmentation",)
    assert reader.task_info == {"segmentation": {"num_classes": 3,
                                                 "class_names": ["background", "road", "car"]}}
    assert len(reader) == 2
    sample = reader[0]
    assert sample["image"].shape == (3, 12, 16) and sample["image"].dtype == torch.uint8
    assert isinstance(sample["targets"]["segmentation"], tv_tensors.Mask)
    assert np.array_equal(sample["targets"]["segmentation"].numpy(), values)
    assert sample["meta"]["orig_size"] == (12, 16)
    _check_placeholders(sample, "segmentation", 12, 16)


def test_segmentation_folder_moves_background_and_ignore_indices(tmp_path: Path) -> None:
    # Folder convention: 0 road, 1 void (ignore), 2 background, 3 car.
    values = np.array([[0, 1, 2, 3]], dtype=np.uint8).repeat(4, axis=0)
    images, masks = write_segmentation_folder(tmp_path, {"a": values}, palette=False)
    reader = SegmentationFolder(
        str(images), str(masks), ["road", "void", "bg", "car"], background_index=2,
        ignore_index=1,
    )
    assert reader.class_names == ["bg", "road", "car"]
    mask = reader[0]["targets"]["segmentation"]
    assert mask[0].tolist() == [1, 255, 0, 2]


def test_segmentation_folder_errors_name_the_files(tmp_path: Path) -> None:
    values = np.zeros((8, 8), dtype=np.uint8)
    images, masks = write_segmentation_folder(tmp_path / "ok", {"a": values, "b": values})
    (masks / "b.png").unlink()
    with pytest.raises(DataSourceError, match=r"have no counterpart \(b\)"):
        SegmentationFolder(str(images), str(masks), ["background", "x"])

    images, masks = write_segmentation_folder(tmp_path / "size", {"a": values})
    Image.new("L", (9, 8)).save(masks / "a.png")
    reader = SegmentationFolder(str(images), str(masks), ["background", "x"])
    with pytest.raises(DataSourceError, match=r"Mask '.*a\.png' is 9x8 but image"):
        reader[0]

    bad = values.copy()
    bad[0, 0] = 7
    images, masks = write_segmentation_folder(tmp_path / "value", {"a": bad})
    reader = SegmentationFolder(str(images), str(masks), ["background", "x"])
    with pytest.raises(ValueError, match=r"a\.png' has values 7"):
        reader[0]


def test_classification_folder_indices_follow_sorted_folder_names(tmp_path: Path) -> None:
    root = write_classification_folder(tmp_path / "cls", {"zebra": 1, "ant": 2})
    reader = ClassificationFolder(str(root))
    assert reader.tasks == ("classification",)
    assert reader.class_names == ["ant", "zebra"]
    labels = [int(reader[i]["targets"]["classification"]) for i in range(len(reader))]
    assert labels == [0, 0, 1]
    assert Path(reader[2]["meta"]["path"]).parent.name == "zebra"
    _check_placeholders(reader[2], "classification", 24, 32)


def test_voc_folder_converts_boxes_and_skips_difficult_objects(tmp_path: Path) -> None:
    images, xml_dir = write_voc_folder(tmp_path, {
        "a": voc_xml([("dog", (1, 2, 10, 20), 0), ("cat", (5, 5, 30, 25), 1),
                      ("cat", (11, 1, 40, 30), 0)]),
        "b": voc_xml([("bird", (3, 3, 8, 8), 1)]),
    })
    reader = VocDetectionFolder(str(images), str(xml_dir))
    assert reader.tasks == ("detection",)
    assert reader.class_names == ["bird", "cat", "dog"]  # difficult-only "bird" still a class
    sample = reader[0]
    boxes = sample["targets"]["detection"]["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and tuple(boxes.canvas_size) == (30, 40)
    assert boxes.tolist() == [[0.0, 1.0, 10.0, 20.0], [10.0, 0.0, 40.0, 30.0]]
    assert sample["targets"]["detection"]["labels"].tolist() == [2, 1]
    _check_placeholders(sample, "detection", 30, 40)
    empty = reader[1]  # only a difficult object: an image with no boxes, still labelled
    assert empty["has"]["detection"] and empty["targets"]["detection"]["boxes"].shape == (0, 4)

    kept = VocDetectionFolder(str(images), str(xml_dir), class_names=["dog", "cat", "bird"],
                              skip_difficult=False)
    assert kept[0]["targets"]["detection"]["labels"].tolist() == [0, 1, 1]


def test_voc_folder_errors_name_the_file(tmp_path: Path) -> None:
    images, xml_dir = write_voc_folder(tmp_path, {"a": voc_xml([("dog", (1, 1, 5, 5), 0)])})
    with pytest.raises(DataSourceError, match=r"classes dog missing from class_names"):
        VocDetectionFolder(str(images), str(xml_dir), class_names=["cat"])
    (xml_dir / "a.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataSourceError, match=r"Annotation '.*a\.xml' is not valid XML"):
        VocDetectionFolder(str(images), str(xml_dir))
    (xml_dir / "a.xml").write_text(voc_xml([("dog", ("x", 1, 5, 5), 0)]))
    with pytest.raises(DataSourceError, match=r"Object 1 of annotation '.*a\.xml' is malformed"):
        VocDetectionFolder(str(images), str(xml_dir))


def test_ids_file_selects_a_subset_of_a_shared_folder(tmp_path: Path) -> None:
    images, xml_dir = write_voc_folder(tmp_path, {"a": voc_xml([]), "b": voc_xml([])})
    (images / "c.jpg").write_bytes((images / "a.jpg").read_bytes())  # image without XML
    ids = tmp_path / "train.txt"
    ids.write_text("b\na\n")
    reader = VocDetectionFolder(str(images), str(xml_dir), ids=str(ids))
    assert [Path(p).stem for p in reader.paths] == ["b", "a"]


def test_samples_of_different_readers_transform_and_collate_together(tmp_path: Path) -> None:
    images, masks = write_segmentation_folder(tmp_path / "seg", {"a": np.ones((12, 16))})
    seg = SegmentationFolder(str(images), str(masks), ["background", "x"],
                             transforms=train_transforms(32, TASKS))
    cls = ClassificationFolder(str(write_classification_folder(tmp_path / "cls", {"x": 1})),
                               transforms=eval_transforms(32, TASKS))
    images, xml_dir = write_voc_folder(tmp_path / "voc", {"a": voc_xml([("x", (1, 1, 20, 20), 0)])})
    voc = VocDetectionFolder(str(images), str(xml_dir), transforms=eval_transforms(32, TASKS))
    batch = collate_multitask([seg[0], cls[0], voc[0]])
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["targets"]["segmentation"].shape == (3, 32, 32)
    assert batch["targets"]["classification"].tolist() == [-1, 0, -1]
    assert [len(t["labels"]) for t in batch["targets"]["detection"]] == [0, 0, 1]
    assert batch["has"]["segmentation"].tolist() == [True, False, False]
    assert batch["has"]["detection"].tolist() == [False, False, True]


def test_mask_suffix_matches_camvid_style_label_files(tmp_path: Path) -> None:
    values = np.zeros((6, 8), dtype=np.uint8)
    values[:, 4:] = 2
    images, masks = write_segmentation_folder(tmp_path, {"a": values, "b": values})
    for name in ("a", "b"):  # CamVid: a.png is labelled by a_P.png
        (masks / f"{name}.png").rename(masks / f"{name}_P.png")
    (masks / "notes.png").write_bytes((masks / "a_P.png").read_bytes())  # no suffix: skipped
    folder = SegmentationFolder(str(images), str(masks), ["background", "road", "car"],
                                mask_suffix="_P")
    assert folder.names == ["a", "b"]
    assert [p.name for p in folder.mask_paths] == ["a_P.png", "b_P.png"]
    assert folder[1]["targets"]["segmentation"][0, 5] == 2
    with pytest.raises(DataSourceError, match="no counterpart"):  # without the option
        SegmentationFolder(str(images), str(masks), ["background", "road", "car"])
    with pytest.raises(DataSourceError, match="ends with mask_suffix '_L'"):
        SegmentationFolder(str(images), str(masks), ["background", "road", "car"],
                           mask_suffix="_L")


def test_no_background_class_keeps_every_index_and_ignores_void(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 3]], dtype=np.uint8).repeat(4, axis=0)  # 3 is void
    images, masks = write_segmentation_folder(tmp_path, {"a": values})
    folder = SegmentationFolder(str(images), str(masks), ["sky", "road", "car", "void"],
                                background_index=None, ignore_index=3)
    assert not folder.has_background
    assert folder.class_names == ["sky", "road", "car"]  # sky is a class, not background
    assert folder.task_info["segmentation"]["num_classes"] == 3
    assert folder[0]["targets"]["segmentation"][0].tolist() == [0, 1, 2, 255]
