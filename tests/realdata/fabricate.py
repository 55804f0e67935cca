"""Small data sets in tmp folders, each with a property of real data that fruits_nuts lacks.

fruits_nuts (the tests' real COCO set) holds three categories in almost every image, 1-based
contiguous ids, polygons only and one file: a data set that differs in any of these ways once
broke the README's commands. Each writer here makes one such set, in the layout its README
command expects, small enough to train on for a step or two:

- :func:`single_category`: one category (no derived image label), one file;
- :func:`board_multilabel`: four 0-based categories, images with one, two and four of them
  (derived multi-label classification), separate train/val files and folders;
- :func:`crowd_noncontiguous`: ids 1, 18, 44 (and two empty categories), a crowd region as
  compressed RLE (ignore pixels), one file;
- :func:`camvid_folder`: CamVid-style masks ``<image>_P.png``, no background class, void;
- :func:`voc_subsets`: a VOC folder whose train and val splits hold different class subsets;
- :func:`multisource_example`: the folders ``configs/data/multisource_example.yaml`` names.

Images are drawn so that objects are visible (a filled shape per object in its class colour
on a noisy background), at a size that is not square.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SIZE = (80, 60)  # width, height: not square, as photographs are
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 30), (200, 60, 200),
           (30, 200, 200)]


@dataclass
class Thing:
    """One object: its class index (into the set's category list) and its xywh box."""

    label: int
    box: tuple[int, int, int, int]
    crowd: bool = False


def draw(path: Path, things: list[Thing], seed: int, size: tuple[int, int] = SIZE) -> None:
    """An RGB picture of ``things`` (filled boxes in their class colour) on noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(90, 150, size=(size[1], size[0], 3), dtype=np.uint8)
    picture = Image.fromarray(noise)
    pen = ImageDraw.Draw(picture)
    for thing in things:
        x, y, w, h = thing.box
        pen.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[thing.label % len(COLOURS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def _annotation(thing: Thing, ann_id: int, image_id: int, category_id: int,
                size: tuple[int, int]) -> dict:
    x, y, w, h = thing.box
    entry = {"id": ann_id, "image_id": image_id, "category_id": category_id,
             "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(thing.crowd)}
    if thing.crowd:  # COCO's crowd regions are compressed RLE
        pixels = np.zeros((size[1], size[0]), dtype=np.uint8, order="F")
        pixels[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(pixels))
        entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        entry["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return entry


def write_coco(
    annotation_file: Path, image_folder: Path, categories: list[tuple[int, str]],
    images: list[list[Thing]], seed: int = 0, first_image_id: int = 1,
) -> Path:
    """A COCO instances file for ``images`` (each a list of things) and their pictures.

    ``categories`` are ``(id, name)``; a thing's ``label`` indexes this list. Returns the
    annotation file."""
    document: dict = {"images": [], "annotations": [],
                      "categories": [{"id": i, "name": n} for i, n in categories]}
    ann_id = 1
    for number, things in enumerate(images):
        image_id = first_image_id + number
        file_name = f"img_{image_id:04d}.jpg"
        draw(image_folder / file_name, things, seed + number)
        document["images"].append({"id": image_id, "file_name": file_name,
                                   "width": SIZE[0], "height": SIZE[1]})
        for thing in things:
            category_id = categories[thing.label][0]
            document["annotations"].append(_annotation(thing, ann_id, image_id, category_id,
                                                       SIZE))
            ann_id += 1
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(document))
    return annotation_file


def _scattered(labels: list[int], number: int) -> list[Thing]:
    """Things of ``labels`` laid out side by side (they never overlap)."""
    width = SIZE[0] // max(1, len(labels))
    return [Thing(label, (i * width + 2, 6 + (number % 3) * 5, max(6, width - 6), 22 + i))
            for i, label in enumerate(labels)]


def single_category(root: Path, count: int = 12) -> dict[str, Path]:
    """One category ("pedestrian", 1-2 per image), one file: ``annotations``, ``images``."""
    images = [_scattered([0] * (1 + n % 2), n) for n in range(count)]
    annotations = write_coco(root / "annotations.json", root / "images",
                             [(1, "pedestrian")], images)
    return {"annotations": annotations, "images": root / "images"}


def board_multilabel(root: Path) -> dict[str, Path]:
    """Four categories with 0-based ids; images of one, two and four classes; separate
    train and val files: ``train_annotations``, ``train_images``, ``val_*``."""
    categories = [(0, "pawn"), (1, "rook"), (2, "king"), (3, "queen")]
    layouts = [[0], [1], [2, 3], [0, 1, 2, 3], [3], [0, 2], [1, 2, 3, 0], [2]]
    train = [_scattered(labels, n) for n, labels in enumerate(layouts)]
    val = [_scattered(labels, n) for n, labels in enumerate([[0], [1, 3], [0, 1, 2, 3], []])]
    paths = {"train_images": root / "train", "val_images": root / "val"}
    paths["train_annotations"] = write_coco(root / "train.json", paths["train_images"],
                                            categories, train)
    paths["val_annotations"] = write_coco(root / "val.json", paths["val_images"], categories,
                                          val, seed=100, first_image_id=100)
    return paths


def crowd_noncontiguous(root: Path, count: int = 10) -> dict[str, Path]:
    """Category ids 1, 18, 44 (plus 5 and 90, never used), a crowd region (compressed RLE)
    in every third image, one file: ``annotations``, ``images``."""
    categories = [(1, "person"), (5, "airplane"), (18, "dog"), (44, "bottle"), (90, "toothbrush")]
    images = []
    for n in range(count):
        things = _scattered([(0, 2, 3)[n % 3], (2, 3, 0)[n % 3]], n)
        if n % 3 == 0:
            things.append(Thing(0, (50, 40, 28, 18), crowd=True))
        images.append(things)
    annotations = write_coco(root / "annotations.json", root / "images", categories, images)
    return {"annotations": annotations, "images": root / "images"}


def _mask_png(path: Path, values: np.ndarray) -> None:
    picture = Image.fromarray(values.astype(np.uint8), mode="L")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def camvid_folder(root: Path, count: int = 6, void: int = 3) -> dict[str, Path]:
    """CamVid-style: ``images/NAME.png`` and ``labels/NAME_P.png``, classes 0..2 (sky, road,
    car: no background) and ``void`` pixels (ignored)."""
    for n in range(count):
        values = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)  # sky
        values[SIZE[1] // 2:, :] = 1  # road
        values[30:45, 10 + n * 5:35 + n * 5] = 2  # car
        values[:4, :] = void  # unlabelled border
        colours = np.zeros((256, 3), dtype=np.uint8)  # void stays black
        colours[:3] = [(120, 160, 230), (90, 90, 90), (220, 40, 40)]
        name = f"0001TP_{n:06d}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours[values]).save(root / "images" / f"{name}.png")
        _mask_png(root / "labels" / f"{name}_P.png", values)
    return {"images": root / "images", "masks": root / "labels"}


def voc_xml(objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """A Pascal VOC annotation of ``(name, (xmin, ymin, xmax, ymax))`` objects (1-based)."""
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects)
    return (f"<annotation><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height></size>"
            f"{body}</annotation>")


def write_voc(root: Path, splits: dict[str, list[list[str]]]) -> dict[str, Path]:
    """A VOC folder (``JPEGImages``, ``Annotations``, ``ImageSets/Main/<split>.txt``) whose
    split ``s`` holds one image per entry of ``splits[s]`` (the class names in it)."""
    names = sorted({n for images in splits.values() for labels in images for n in labels})
    paths = {"images": root / "JPEGImages", "annotations": root / "Annotations"}
    paths["annotations"].mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        stems = []
        for n, labels in enumerate(images):
            stem = f"{split}_{n:03d}"
            things = _scattered([names.index(label) for label in labels], n)
            draw(paths["images"] / f"{stem}.jpg", things, seed=sum(map(ord, stem)))
            boxes = [(label, (t.box[0] + 1, t.box[1] + 1, t.box[0] + t.box[2],
                              t.box[1] + t.box[3])) for label, t in zip(labels, things)]
            (paths["annotations"] / f"{stem}.xml").write_text(voc_xml(boxes))
            stems.append(stem)
        ids = root / "ImageSets" / "Main" / f"{split}.txt"
        ids.write_text("\n".join(stems) + "\n")
        paths[f"{split}_ids"] = ids
    return paths


def voc_subsets(root: Path) -> dict[str, Path]:
    """A fridge-objects VOC folder: train lacks "jar", val lacks "carton" and "milk"."""
    return write_voc(root, {
        "train": [["carton", "can"], ["milk"], ["can", "milk", "carton"], ["carton"],
                  ["can"], ["milk", "can"]],
        "val": [["can", "jar"], ["jar"], ["can"]],
    })


def _segmentation_folder(images: Path, masks: Path, count: int, seed: int) -> None:
    """VOC-style index masks (0 background, 1 road, 2 car) with 255 ignore borders."""
    for n in range(count):
        values = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
        values[40:, :] = 1
        values[20:38, 5 + 4 * n:30 + 4 * n] = 2
        values[:, :2] = 255
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[1], colours[2] = (90, 90, 90), (220, 40, 40)
        images.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(seed + n).integers(0, 30, (SIZE[1], SIZE[0], 3))
        Image.fromarray((colours[values] + noise).astype(np.uint8)).save(
            images / f"s{seed + n:03d}.jpg")
        _mask_png(masks / f"s{seed + n:03d}.png", values)


def multisource_example(cwd: Path) -> None:
    """The folders of ``configs/data/multisource_example.yaml`` under ``cwd/data``: a street
    segmentation folder (train and val), a two-class places folder, a VOC folder."""
    data = cwd / "data"
    _segmentation_folder(data / "streets" / "images", data / "streets" / "masks", 6, 0)
    _segmentation_folder(data / "streets" / "val_images", data / "streets" / "val_masks", 3, 50)
    for label, place in enumerate(("beach", "forest")):
        for n in range(4):
            draw(data / "places" / "train" / place / f"{n}.jpg",
                 [Thing(label + 2, (0, 0, SIZE[0], SIZE[1] // 2))], seed=10 * label + n)
    write_voc(data / "VOC", {
        "train": [["cat"], ["dog", "cat"], ["dog"], ["cat", "dog"], ["cat"], ["dog"]],
        "val": [["cat"], ["dog"], ["dog", "cat"]],
    })
