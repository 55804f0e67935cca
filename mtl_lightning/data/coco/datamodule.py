"""The data module of any COCO-format dataset (split files, or one file split by fractions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtl_lightning.data.base import MultiTaskDataModule, NamedSource
from mtl_lightning.data.coco.dataset import TASK_NAMES, CocoMultiTaskDataset, coco_task_info
from mtl_lightning.data.coco.image_labels import (
    ImageLabels,
    image_class_names,
    resolve_image_labels,
)
from mtl_lightning.data.coco.validation import load_and_validate, load_coco_json
from mtl_lightning.data.images import DEFAULT_MAX_PIXELS
from mtl_lightning.shared.errors import DataError

TASK_SOURCES = ("classification from an image-label field or derived from 2+ categories, "
                "segmentation from annotation masks, detection from categories and boxes")


def tasks_in_file(coco: dict[str, Any], image_labels: ImageLabels,
                  dense_maps: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The tasks a COCO document labels, in ``TASK_NAMES`` order: classification when image
    labels are read or derived (``image_labels`` as resolved, not ``off``), segmentation when
    some annotation has a mask, detection when the file has categories, then depth and
    normals when ``dense_maps`` (the option, or the file's own entry) names them. ``fit``,
    ``check-data`` and the model (through ``task_info``) so agree on what a file trains."""
    has_categories = bool(coco.get("categories"))
    has_masks = any(
        annotation.get("segmentation") for annotation in coco.get("annotations") or []
    )
    labels = {"classification": image_labels != "off",
              "segmentation": has_categories and has_masks,
              "detection": has_categories}
    return (*(task for task in TASK_NAMES if labels[task]), *(dense_maps or {}))


class CocoDataModule(MultiTaskDataModule):
    """Any COCO-format dataset: separate split files, or one file split deterministically.

    Give ``train_annotations``/``train_images`` and ``val_annotations``/``val_images`` (and
    optionally the ``test_*`` pair), or give one ``annotations``/``images`` pair and the
    fractions ``val_fraction``/``test_fraction``: images are then assigned to splits by a
    seeded permutation of their ids, so the split never changes between runs or machines.

    Class counts and names come from the training file's ``categories`` (and the image
    labels, see ``CocoMultiTaskDataset``); the original category ids travel with them into
    the model, its checkpoints and ``predict``'s output.

    Args:
        train_annotations, train_images, val_annotations, val_images, test_annotations,
        test_images: COCO JSON files and the folders their ``file_name`` entries are
            relative to.
        annotations, images: a single COCO file and its image folder, split by fractions.
        val_fraction, test_fraction, split_seed: the deterministic split of that file.
        image_labels: ``auto`` | ``field`` | ``derived`` | ``off`` (image-level labels).
        tasks: (of ``MultiTaskDataModule``) ``None`` loads the tasks the training file labels
            (:func:`tasks_in_file`): a single-category file without an image-label field
            trains segmentation and detection, a box-only file detection.
        image_label_field: the ``images[]`` field holding the image-level label.
        max_image_pixels: refuse images larger than this many pixels (before decoding).
        check_images: check every image file before training (exists, header, size).
        allow_outside_images: read images whose path (absolute, ``../``, or a symlink)
            resolves outside their images folder; by default such entries are dropped.
        dense_maps: per-task folders of per-image depth or normal maps, e.g.
            ``{depth: {dir: depth, scale: 0.001}, normals: {dir: normals}}`` (a relative
            ``dir`` is inside each split's images folder; see
            :mod:`mtl_lightning.data.coco.dense_map_files`); default: the annotation file's own
            ``dense_maps`` entry, if it has one.
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    def __init__(
        self,
        train_annotations: str | None = None,
        train_images: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_annotations: str | None = None,
        test_images: str | None = None,
        annotations: str | None = None,
        images: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        image_labels: ImageLabels = "auto",
        image_label_field: str = "image_label",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        check_images: bool = True,
        allow_outside_images: bool = False,
        dense_maps: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.allow_outside_images = allow_outside_images
        self.dense_maps = dense_maps
        single = annotations is not None
        if single == (train_annotations is not None):
            raise ValueError(
                "CocoDataModule needs either train_annotations (+ val_annotations) or one "
                "annotations file with val_fraction; give exactly one of the two."
            )
        if single:
            if images is None:
                raise ValueError("data.annotations needs data.images, the folder of its images.")
            if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or (
                val_fraction + test_fraction >= 1.0
            ):
                raise ValueError(
                    "data.val_fraction and data.test_fraction must be in [0, 1) and sum to "
                    "less than 1."
                )
            self.files = {split: (annotations, images) for split in ("train", "val", "test")}
        else:
            self.files = {"train": (train_annotations, train_images)}
            for split, pair in (("val", (val_annotations, val_images)),
                                ("test", (test_annotations, test_images))):
                if pair[0] is not None:
                    self.files[split] = pair
        for split, (annotation_file, image_folder) in self.files.items():
            if image_folder is None:
                raise ValueError(f"data.{split}_annotations needs data.{split}_images too.")
            if not Path(annotation_file).is_file():
                raise FileNotFoundError(
                    f"Annotation file '{annotation_file}' (data.{split}_annotations) does not "
                    "exist; check the path."
                )
        self.fractions = {"val": val_fraction, "test": test_fraction} if single else None
        self.split_seed = split_seed
        self.image_label_field = image_label_field
        self.max_image_pixels = max_image_pixels
        self.check_images = check_images
        # Class information is read here (before setup) so the CLI can link it into the model.
        train = load_coco_json(self.files["train"][0])
        self.image_labels = resolve_image_labels(train, image_labels, image_label_field,
                                                 self.files["train"][0])
        self.file_dense_maps = train.get("dense_maps")
        labelled = tasks_in_file(train, self.image_labels,
                                 dense_maps if dense_maps is not None else self.file_dense_maps)
        if self.named_tasks:
            missing = [t for t in self.tasks if t not in labelled]
            if missing:
                raise DataError(
                    f"data.tasks names {missing} but {self.files['train'][0]} labels only "
                    f"{list(labelled) or 'nothing'} ({TASK_SOURCES}); remove {missing} from "
                    "data.tasks, or leave data.tasks null to load what the file labels."
                )
        else:
            self.tasks = labelled
        self._all_image_ids = sorted(int(image["id"]) for image in train["images"])
        categories = sorted(train["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.category_names = [str(c["name"]) for c in categories]
        self.image_class_names = image_class_names(
            train, self.image_labels, image_label_field, self.category_names, self.files["train"][0]
        )

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        info = coco_task_info(self.image_class_names, self.category_names, self.category_ids,
                              multilabel=self.image_labels == "derived")
        dense = self.dense_maps if self.dense_maps is not None else self.file_dense_maps
        for task, entry in (dense or {}).items():  # regression tasks: no classes
            info[task] = {"type": entry["type"]} if "type" in (entry or {}) else {}
        return {task: info[task] for task in self.tasks}

    def _split_ids(self, split: str) -> set[int] | None:
        """Image ids of ``split`` when one file is split by fractions, else None (all)."""
        if self.fractions is None:
            return None
        ids = self._all_image_ids
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(self.split_seed))
        shuffled = [ids[i] for i in order.tolist()]
        n_val = round(len(ids) * self.fractions["val"])
        n_test = round(len(ids) * self.fractions["test"])
        parts = {"val": shuffled[:n_val], "test": shuffled[n_val:n_val + n_test],
                 "train": shuffled[n_val + n_test:]}
        return set(parts[split])

    def setup(self, stage: str | None = None) -> None:
        """Validate (fatal problems stop here, repairs are counted in one warning) and index."""
        validated: dict[str, dict[str, Any]] = {}  # one validation per file, not per split
        for split, (annotation_file, image_folder) in self.files.items():
            if split in self.datasets:
                continue
            ids = self._split_ids(split)
            if ids is not None and not ids:
                continue  # a fraction of 0: no such split
            if annotation_file not in validated:
                validated[annotation_file] = load_and_validate(
                    annotation_file, image_folder, check_images=self.check_images,
                    max_pixels=self.max_image_pixels, image_label_field=self.image_label_field,
                    image_labels=self.image_labels, allow_outside_images=self.allow_outside_images,
                )
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
            self.datasets[split] = CocoMultiTaskDataset(
                annotation_file, image_folder, tasks=self.tasks, image_labels=self.image_labels,
                image_label_field=self.image_label_field,
                transforms=NamedSource(Path(annotation_file).stem, transforms), image_ids=ids,
                max_image_pixels=self.max_image_pixels,
                document=validated[annotation_file], allow_outside_images=self.allow_outside_images,
                dense_maps=self.dense_maps,
            )
            self._check_classes(split, self.datasets[split])

    def _check_classes(self, split: str, dataset: CocoMultiTaskDataset) -> None:
        if dataset.category_names != self.category_names:
            raise DataError(
                f"The {split} file {dataset.annotation_file} has categories "
                f"{dataset.category_names} but the train file has {self.category_names}; "
                "use the same categories in every split."
            )



__all__ = ["CocoDataModule", "tasks_in_file"]
