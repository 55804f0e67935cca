"""Single-task dataset readers: folders that label one task each, in our sample format.

Real multi-task projects combine datasets that each label only some tasks (a CamVid-style
segmentation folder, an ImageFolder of classes, Pascal VOC boxes). Every reader here yields
exactly the sample of :class:`~mtl_lightning.data.coco.dataset.CocoMultiTaskDataset`::

    {"image": tv_tensors.Image uint8 [3, H, W],
     "targets": {"classification": int64 scalar (-1: none),
                 "segmentation": tv_tensors.Mask uint8 [H, W] (0 background, k+1 class k, 255),
                 "detection": {"boxes": BoundingBoxes XYXY [N, 4], "labels": int64 [N]}},
     "has": {task: bool}, "meta": {"image_id", "path", "orig_size"}}

with a target for every task in ``TASK_NAMES``: the tasks a reader does not label get
``has[task] = False`` and :func:`placeholder_target` (so ``collate_multitask`` and the joint
transforms work unchanged). ``reader.tasks`` lists the tasks it labels and ``reader.task_info``
their classes, like a data module. ``meta["image_id"]`` is the sample's index in the reader.

Readers that match images with label files by file stem accept ``ids``: a text file of stems,
one per line (Pascal VOC's ``ImageSets/*/train.txt``), to read a subset of a shared folder.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtl_lightning.data.constants import COCO_TASK_NAMES as TASK_NAMES
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.data.images import IMAGE_SUFFIXES, load_rgb
from mtl_lightning.tasks import UnknownTaskError, task_class

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


class DataSourceError(ValueError):
    """A dataset folder or source configuration a user must fix (one sentence)."""


def placeholder_target(task_type: str, height: int, width: int) -> Any:
    """The target of a task a sample is not labelled for (``has[task]`` is False): the
    placeholder its type declares (:meth:`~mtl_lightning.tasks.base.Task.placeholder_target`;
    classification -1, an all-ignore (255) mask of the image size, no boxes, an all-invalid
    dense map), shaped like real targets so that transforms resize them and collation stacks
    them with labelled samples. ``task_type`` is a registered type name or a class path."""
    try:
        return task_class(task_type).placeholder_target(height, width)
    except (UnknownTaskError, NotImplementedError) as error:
        raise DataSourceError(f"No placeholder target for task type '{task_type}': {error}") \
            from None


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _by_stem(
    folder: Path, suffixes: tuple[str, ...], what: str, name_suffix: str = ""
) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes``, keyed by stem (a stem must be unique).

    With ``name_suffix`` (CamVid's ``_P`` of ``0001TP_006690_P.png``) only files whose stem
    ends with it are read, keyed by the stem without it, so they match their images' stems.
    """
    if not folder.is_dir():
        raise DataSourceError(f"The {what} folder '{folder}' does not exist; check the path.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if not path.stem.endswith(name_suffix):
            continue
        stem = path.stem[:len(path.stem) - len(name_suffix)]
        if stem in found:
            raise DataSourceError(
                f"Two {what} files share the name '{stem}' ({found[stem].name}, "
                f"{path.name}) in '{folder}'; keep one."
            )
        found[stem] = path
    return found


def _match(
    images: dict[str, Path], labels: dict[str, Path], ids: str | None,
    image_dir: Path, label_dir: Path,
) -> list[str]:
    """Stems present in both folders, in sorted order (or the order of the ``ids`` file)."""
    if ids is not None:
        id_file = Path(ids)
        if not id_file.is_file():
            raise DataSourceError(f"The ids file '{ids}' does not exist; check the path.")
        names = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]
        missing = [n for n in names if n not in images or n not in labels]
        if missing:
            raise DataSourceError(
                f"{len(missing)} name(s) of '{ids}' lack an image in '{image_dir}' or a label "
                f"file in '{label_dir}' ({_examples(missing)}); add the files or remove the names."
            )
    else:
        unmatched = sorted(set(images) ^ set(labels))
        if unmatched:
            raise DataSourceError(
                f"{len(unmatched)} file(s) of '{image_dir}' and '{label_dir}' have no "
                f"counterpart ({_examples(unmatched)}); add the missing files, remove the extra "
                "ones or list the names to use in an ids file."
            )
        names = sorted(images)
    if not names:
        raise DataSourceError(f"No images in '{image_dir}' ({', '.join(IMAGE_SUFFIXES)}).")
    return names


class _SingleTaskSource(Dataset):
    """Assembles samples that label one task and carry placeholders for the others."""

    task: str = ""
    transforms: Transform | None = None
    paths: list[Path]
    #: whether segmentation class 0 is a background class (matched by position across
    #: sources) rather than a named class like any other
    has_background: bool = True

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this reader labels."""
        return (self.task,)

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        """``{task: {"num_classes", "class_names"}}`` for the labelled task."""
        names = list(self.class_names)
        return {self.task: {"num_classes": len(names), "class_names": names}}

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 RGB [3, H, W] of sample ``index`` (any format, EXIF-upright; see images.py)."""
        return load_rgb(self.paths[index], context=f"{type(self).__name__} sample {index}")

    def _sample(self, index: int, image: torch.Tensor, target: Any) -> Sample:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        targets = {
            task: target if task == self.task else placeholder_target(task, height, width)
            for task in TASK_NAMES
        }
        sample = {
            "image": tv_tensors.Image(image),
            "targets": targets,
            "has": {task: task == self.task for task in TASK_NAMES},
            "meta": {"image_id": index, "path": str(self.paths[index]),
                     "orig_size": (height, width)},
        }
        return self.transforms(sample) if self.transforms is not None else sample


class SegmentationFolder(_SingleTaskSource):
    """Semantic segmentation from ``images/NAME.*`` and index masks ``masks/NAME.png``.

    A mask is a palette ("P") or grayscale ("L") PNG whose pixel value is the folder's class
    index: ``class_names[i]`` names value ``i``. With the defaults (``background_index=0``,
    ``ignore_index=255``, the VOC convention) folder value ``i`` is our value ``i``:
    0 is background (``class_names[0]``, e.g. "background"), ``k+1`` object class ``k``, 255
    ignored. Another ``background_index`` is moved to 0 and the other indices keep their order;
    another ``ignore_index`` (e.g. CamVid's "void", 11) becomes 255. ``background_index=None``
    is for data sets without a background class (CamVid: value 0 is "Sky"): every folder index
    except ``ignore_index`` is a class, ``class_names[i]`` is our value ``i``, and across
    sources every class, index 0 included, is matched by name. Values that are neither a class
    nor the ignore index raise an error naming the mask.

    Args:
        images: folder of images.
        masks: folder of masks with the images' stems (plus ``mask_suffix``).
        class_names: name of every folder index, background included.
        transforms: joint transform over the whole sample.
        background_index: folder value of the background, or ``None`` (no background class).
        ignore_index: folder value of ignored pixels.
        ids: optional text file of the stems to read (default: all; then every image needs a
            mask and every mask an image).
        mask_suffix: what a mask's stem adds to its image's stem, e.g. ``"_P"`` for CamVid's
            ``0001TP_006690_P.png`` next to ``0001TP_006690.png``; masks without it are skipped.
    """

    task = "segmentation"

    def __init__(
        self,
        images: str,
        masks: str,
        class_names: list[str],
        transforms: Transform | None = None,
        background_index: int | None = 0,
        ignore_index: int = 255,
        ids: str | None = None,
        mask_suffix: str = "",
    ) -> None:
        self.image_dir, self.mask_dir = Path(images), Path(masks)
        if background_index is not None and (
            not 0 <= background_index < len(class_names) or background_index == ignore_index
        ):
            raise DataSourceError(
                f"SegmentationFolder '{masks}': background_index {background_index} must index "
                f"class_names ({len(class_names)} names) and differ from ignore_index, or be "
                "null for data without a background class."
            )
        if not 0 <= ignore_index <= 255:
            raise DataSourceError(
                f"SegmentationFolder '{masks}': ignore_index {ignore_index} must be in 0..255."
            )
        self.folder_class_names = list(class_names)
        self.background_index, self.ignore_index = background_index, ignore_index
        self.has_background = background_index is not None
        self.transforms = transforms
        image_paths = _by_stem(self.image_dir, IMAGE_SUFFIXES, "image")
        mask_paths = _by_stem(self.mask_dir, (".png",), "mask", name_suffix=mask_suffix)
        if mask_suffix and not mask_paths:
            raise DataSourceError(
                f"No mask in '{masks}' ends with mask_suffix '{mask_suffix}' (e.g. "
                f"NAME{mask_suffix}.png); check the suffix."
            )
        self.names = _match(image_paths, mask_paths, ids, self.image_dir, self.mask_dir)
        self.paths = [image_paths[n] for n in self.names]
        self.mask_paths = [mask_paths[n] for n in self.names]
        self.lookup = self._lookup()

    def _lookup(self) -> np.ndarray:
        """Folder value -> our value (uint8 [256]); invalid values map to -1 (int16)."""
        lookup = np.full(256, -1, dtype=np.int16)
        lookup[self.ignore_index] = IGNORE_INDEX
        if self.background_index is not None:
            lookup[self.background_index] = 0
        objects = [i for i in range(len(self.folder_class_names))
                   if i not in (self.background_index, self.ignore_index)]
        for ours, folder_value in enumerate(objects, start=int(self.has_background)):
            lookup[folder_value] = ours
        return lookup

    @property
    def class_names(self) -> list[str]:
        """Our order: background first (if any), then the other classes in folder order."""
        names = self.folder_class_names
        first = [] if self.background_index is None else [names[self.background_index]]
        return first + [
            n for i, n in enumerate(names) if i not in (self.background_index, self.ignore_index)
        ]

    def load_mask(self, index: int) -> np.ndarray:
        """Our uint8 [H, W] mask (0 background, k+1 class k, 255 ignore) of sample ``index``."""
        path = self.mask_paths[index]
        with Image.open(path) as picture:
            if picture.mode not in ("P", "L"):
                raise DataSourceError(
                    f"Mask '{path}' is a {picture.mode} image; save it as a palette (P) or "
                    "grayscale (L) PNG of class indices."
                )
            values = np.asarray(picture, dtype=np.uint8)
        mask = self.lookup[values]
        if (mask < 0).any():
            bad = np.unique(values[mask < 0]).tolist()
            raise DataSourceError(
                f"Mask '{path}' has values {_examples([str(v) for v in bad])} that are neither a "
                f"class index (0..{len(self.folder_class_names) - 1}) nor ignore_index "
                f"{self.ignore_index}; fix the mask or class_names."
            )
        return mask.astype(np.uint8)

    def __getitem__(self, index: int) -> Sample:
        image = self.load_image(index)
        mask = self.load_mask(index)
        if mask.shape != tuple(image.shape[-2:]):
            raise DataSourceError(
                f"Mask '{self.mask_paths[index]}' is {mask.shape[1]}x{mask.shape[0]} but image "
                f"'{self.paths[index]}' is {image.shape[-1]}x{image.shape[-2]}; they must match."
            )
        return self._sample(index, image, tv_tensors.Mask(torch.from_numpy(mask)))


class ClassificationFolder(_SingleTaskSource):
    """Image classification from ``root/CLASS/*.jpg`` (torchvision's ImageFolder layout).

    Class names are the sorted sub-folder names (hidden folders are skipped); the target is
    the class index. Every class folder must hold at least one image.

    Args:
        root: folder of class folders.
        transforms: joint transform over the whole sample.
    """

    task = "classification"

    def __init__(self, root: str, transforms: Transform | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataSourceError(f"The classification folder '{root}' does not exist.")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")
        if not folders:
            raise DataSourceError(
                f"The classification folder '{root}' has no class sub-folders; use the layout "
                "root/CLASS/*.jpg."
            )
        self._class_names = [folder.name for folder in folders]
        self.paths, self.labels = [], []
        empty = []
        for label, folder in enumerate(folders):
            files = sorted(_by_stem(folder, IMAGE_SUFFIXES, "image").values())
            empty += [] if files else [folder.name]
            self.paths += files
            self.labels += [label] * len(files)
        if empty:
            raise DataSourceError(
                f"Class folder(s) {_examples(empty)} of '{root}' hold no images; add images or "
                "remove the folders."
            )
        self.transforms = transforms

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def __getitem__(self, index: int) -> Sample:
        image = self.load_image(index)
        return self._sample(index, image, torch.tensor(self.labels[index], dtype=torch.int64))


class VocDetectionFolder(_SingleTaskSource):
    """Object detection from Pascal VOC XML files ``annotations/NAME.xml`` for ``images/NAME.*``.

    Each ``<object>`` gives ``<name>`` and ``<bndbox>`` with 1-based inclusive pixel corners
    ``xmin, ymin, xmax, ymax``; our absolute xyxy box is ``(xmin - 1, ymin - 1, xmax, ymax)``.
    Objects marked ``<difficult>1</difficult>`` are skipped when ``skip_difficult`` (VOC's
    evaluation ignores them too), but their names still count as classes, so the class list
    does not depend on that option. An image whose objects are all skipped has no boxes: it is
    a detection label ("nothing here"), not a missing one.

    Args:
        images: folder of images.
        annotations: folder of VOC XML files with the images' stems.
        class_names: detection classes in label order (default: sorted unique names found).
        transforms: joint transform over the whole sample.
        skip_difficult: drop difficult objects.
        ids: optional text file of the stems to read (VOC's ``ImageSets/Main/train.txt``).
    """

    task = "detection"

    def __init__(
        self,
        images: str,
        annotations: str,
        class_names: list[str] | None = None,
        transforms: Transform | None = None,
        skip_difficult: bool = True,
        ids: str | None = None,
    ) -> None:
        self.image_dir, self.annotation_dir = Path(images), Path(annotations)
        self.transforms = transforms
        image_paths = _by_stem(self.image_dir, IMAGE_SUFFIXES, "image")
        xml_paths = _by_stem(self.annotation_dir, (".xml",), "annotation")
        self.names = _match(image_paths, xml_paths, ids, self.image_dir, self.annotation_dir)
        self.paths = [image_paths[n] for n in self.names]
        self.xml_paths = [xml_paths[n] for n in self.names]
        parsed = [self._parse(path) for path in self.xml_paths]
        found = sorted({name for objects in parsed for name, _, _ in objects})
        if class_names is None:
            self._class_names = found
        else:
            self._class_names = list(class_names)
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise DataSourceError(
                    f"Annotations in '{annotations}' name classes {_examples(unknown)} missing "
                    "from class_names; add them or leave class_names unset."
                )
        index = {name: i for i, name in enumerate(self._class_names)}
        self.boxes, self.labels = [], []
        for objects in parsed:
            kept = [(name, box) for name, box, difficult in objects
                    if not (difficult and skip_difficult)]
            self.boxes.append(np.asarray([b for _, b in kept], dtype=np.float32).reshape(-1, 4))
            self.labels.append(np.asarray([index[n] for n, _ in kept], dtype=np.int64))

    @staticmethod
    def _parse(path: Path) -> list[tuple[str, list[float], bool]]:
        """``(name, xyxy box, difficult)`` of every object of one VOC XML file."""
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as error:
            raise DataSourceError(
                f"Annotation '{path}' is not valid XML ({error}); fix or remove the file."
            ) from error
        objects = []
        for number, element in enumerate(root.findall("object"), start=1):
            name = (element.findtext("name") or "").strip()
            box = element.find("bndbox")
            try:
                if not name or box is None:
                    raise ValueError("missing <name> or <bndbox>")
                xmin, ymin, xmax, ymax = (
                    float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")
                )
                difficult = int(float((element.findtext("difficult") or "0").strip())) == 1
            except ValueError as error:
                raise DataSourceError(
                    f"Object {number} of annotation '{path}' is malformed ({error}); give it a "
                    "<name> and a <bndbox> with numeric xmin, ymin, xmax, ymax."
                ) from error
            if xmax < xmin or ymax < ymin:
                raise DataSourceError(
                    f"Object {number} of annotation '{path}' has xmax < xmin or ymax < ymin; "
                    "fix its <bndbox>."
                )
            objects.append((name, [xmin - 1.0, ymin - 1.0, xmax, ymax], difficult))
        return objects

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def __getitem__(self, index: int) -> Sample:
        image = self.load_image(index)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(self.boxes[index]), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(self.labels[index]),
        }
        return self._sample(index, image, target)


__all__ = [
    "ClassificationFolder",
    "DataSourceError",
    "SegmentationFolder",
    "VocDetectionFolder",
    "placeholder_target",
]
