"""LightningDataModules: loaders, transforms and the class information the model needs.

Every data module exposes ``task_info`` (task instance name -> ``{"type", "num_classes",
"class_names"}``, ``type`` omitted where it equals the name); the CLI links it into the model,
so class counts always come from the data. Samples' ``targets`` and ``has`` are keyed by the
same instance names, so a reader can label two tasks of one type (``drivable`` and ``lanes``,
both segmentation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from mtl_lightning.data.batch_augmentation import batch_augmentation as _batch_augmentation
from mtl_lightning.data.batch_augmentation import worker_transforms
from mtl_lightning.data.coco import (
    TASK_NAMES,
    CocoMultiTaskDataset,
    ImageLabels,
    coco_task_info,
    image_class_names,
    resolve_image_labels,
)
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_rgb
from mtl_lightning.data.sample_cache_budget import DEFAULT_CACHE_BUDGET, check_cache_budget
from mtl_lightning.data.scenes import DENSE_TASK_NAMES, ScenesConfig, ensure_scenes
from mtl_lightning.data.transforms import ResizeMode, eval_transforms, train_transforms
from mtl_lightning.data.validation import DataError, load_and_validate, load_coco_json
from mtl_lightning.data.workers import freeze_in_worker

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ImageFolderForPrediction(Dataset):
    """Every image file of a folder (sorted), for ``predict``: no labels, original size kept.

    Each sample's ``meta["name"]`` is the file's name with its extension (``a.jpg`` and
    ``a.png`` are two names), the key of everything ``predict`` writes for it. A file that
    cannot be read (corrupt, truncated, above ``max_pixels``) does not stop the others: its
    sample is a black placeholder whose ``meta["error"]`` holds the one-sentence reason, and
    ``predict`` lists it instead of predicting.
    """

    def __init__(
        self, folder: str | Path, transforms: Any, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"data.predict_images='{folder}' is not a folder; give a folder of images."
            )
        self.paths = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise FileNotFoundError(
                f"No images ({', '.join(IMAGE_SUFFIXES)}) in data.predict_images='{folder}'."
            )
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        meta: dict[str, Any] = {"path": str(path), "name": path.name}
        try:
            image = load_rgb(path, self.max_pixels, context="data.predict_images")
        except ImageDecodeError as error:
            image = torch.zeros(3, 1, 1, dtype=torch.uint8)
            meta["error"] = str(error).split("; ")[0] + "."  # the fix is not in annotations
        meta["orig_size"] = tuple(image.shape[-2:])
        sample = {"image": tv_tensors.Image(image), "targets": {}, "has": {}, "meta": meta}
        return self.transforms(sample)


class NamedSource:
    """A sample transform that first records the sample's source in ``meta["source"]``.

    With ``meta["image_id"]`` it names a sample uniquely even when several data sets are
    shown together (overlay file names); :class:`~mtl_lightning.data.multisource.SourceDataset`
    sets the same key for each of ``data.sources``.
    """

    def __init__(self, name: str, transforms: Any = None) -> None:
        self.name, self.transforms = name, transforms

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample = {**sample, "meta": {**sample.get("meta", {}), "source": self.name}}
        return self.transforms(sample) if self.transforms is not None else sample


class MultiTaskDataModule(LightningDataModule):
    """Shared loader and transform options of every data module.

    Args:
        tasks: task instances to load labels for; ``None`` (the default) loads every task the
            data labels (a subclass decides which: Scenes labels all three, a COCO file what
            it holds). A named task the data cannot label is an error.
        image_size: training/evaluation size in pixels: one int (a square) or
            ``[height, width]`` (e.g. ``[288, 384]``, the NYUv2 protocol's).
        batch_size: training batch size (per process).
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: loader worker processes.
        pin_memory: pin host memory (useful with a GPU).
        hflip: horizontal-flip probability (training).
        scale_jitter: random scale range (training).
        translate: random translation as a fraction of the image (training).
        color_jitter: brightness/contrast/saturation jitter strength (training).
        predict_images: a folder of images for ``predict``.
        resize: ``stretch`` (both sides to ``image_size``) or ``letterbox`` (longest side to
            ``image_size``, padded to a square: photos keep their aspect ratio); see
            :mod:`mtl_lightning.data.transforms`.
        cache_samples: decode every sample of a split once, when its first loader is made,
            and keep it in memory (before the random transforms); loader workers share it.
            About 65 KB per 128 px sample (image, mask, boxes), held once per DDP process, so
            meant for data sets that fit in RAM.
        cache_budget: the share of the available memory one split's cache may take; a
            split estimated larger is refused before it is decoded (0: no check). See
            :mod:`mtl_lightning.data.sample_cache_budget`.
        batch_augmentation: apply the training augmentation (``hflip``, ``scale_jitter``,
            ``translate``, ``color_jitter``) to each batch after it reaches the device, with
            per-image random parameters, instead of to each sample in the loader worker
            (see :mod:`mtl_lightning.data.batch_augmentation`).
    """

    def __init__(
        self,
        tasks: tuple[str, ...] | None = None,
        image_size: int | tuple[int, int] = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] = (0.8, 1.2),
        translate: float = 0.1,
        color_jitter: float = 0.2,
        predict_images: str | None = None,
        cache_samples: bool = False,
        resize: ResizeMode = "stretch",
        cache_budget: float = DEFAULT_CACHE_BUDGET,
        batch_augmentation: bool = False,
    ) -> None:
        super().__init__()
        self.batch_augmentation = batch_augmentation
        self.named_tasks = tasks is not None  # named by the user, else followed from the data
        self.tasks = tuple(tasks) if tasks is not None else TASK_NAMES
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = {"hflip": hflip, "scale": tuple(scale_jitter), "translate": translate,
                        "color_jitter": color_jitter}
        self.predict_images = predict_images
        self.cache_samples = cache_samples
        self.cache_budget = cache_budget
        eval_transforms(1, (), resize)  # an unknown mode is refused here, in one sentence
        self.resize = resize
        self.datasets: dict[str, Dataset] = {}

    #: Largest image (pixels) decoded; COCO data modules make it the option
    #: ``data.max_image_pixels``, which ``predict`` then applies to its folder too.
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        """Task -> ``{"num_classes", "class_names"}``, linked into the model by the CLI."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether ``setup`` produced a ``split`` dataset (a COCO test set is optional)."""
        return split in self.datasets

    def _cache(self, split: str, dataset: Dataset) -> None:
        """With ``cache_samples``, decode the split's samples now, once (see
        :meth:`CocoMultiTaskDataset.cache_in_memory`). Called when the split's first loader
        is made: before its workers fork, and never for a split that is not read."""
        cacheable = isinstance(dataset, CocoMultiTaskDataset)  # not the predict folder
        if not self.cache_samples or not cacheable or dataset._cache is not None:
            return
        check_cache_budget([(dataset.decoded_sample, len(dataset))], f"the {split} split",
                           self.cache_budget)
        start = time.perf_counter()
        megabytes = dataset.cache_in_memory()
        log.info("data.cache_samples: %d %s samples decoded in %.1f s, %.0f MB held",
                 len(dataset), split, time.perf_counter() - start, megabytes)

    def train_transforms(self) -> Any:
        if self.batch_augmentation:  # the random part runs on the batch: on_after_batch_transfer
            return worker_transforms(self.image_size, self.resize)
        return train_transforms(self.image_size, self.tasks, resize=self.resize, **self.augment)

    def eval_transforms(self) -> Any:
        return eval_transforms(self.image_size, self.tasks, self.resize)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``batch_augmentation``, augment each training batch on its device."""
        if self.batch_augmentation and self.trainer is not None and self.trainer.training:
            return _batch_augmentation(self.augment, self.task_info)(batch)
        return batch

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(
                f"The data has no '{split}' split: give the data module a {split} set "
                f"(for COCO data: data.{split}_annotations and data.{split}_images)."
            )
        self._cache(split, self.datasets[split])
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[split]) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_multitask, worker_init_fn=freeze_in_worker,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_images is None:
            raise ValueError(
                "predict needs a folder of images: pass --data.predict_images PATH/TO/FOLDER."
            )
        self.datasets["predict"] = ImageFolderForPrediction(
            self.predict_images, eval_transforms(self.image_size, (), self.resize),
            max_pixels=self.max_image_pixels,
        )
        return self._loader("predict", shuffle=False, batch_size=self.eval_batch_size)


class ScenesDataModule(MultiTaskDataModule):
    """The procedural Scenes benchmark, generated once into ``root`` and read back as COCO.

    Args:
        root: folder holding generated datasets (one sub-folder per config fingerprint).
        num_train, num_val, num_test, num_classes, min_objects, max_objects,
        min_object_size, max_object_size, classification_target, label_noise,
        label_fraction, seed: the generator's knobs (see ``ScenesConfig``).
        dense: also render depth and surface normals and shade the images by them (see
            :mod:`mtl_lightning.data.scenes_dense`); the set then labels five tasks.
        generator_workers: processes used to generate the images (0: in this process).
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    def __init__(
        self,
        root: str = "data/scenes",
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 500,
        num_classes: int = 5,
        min_objects: int = 1,
        max_objects: int = 8,
        min_object_size: int = 8,
        max_object_size: int | None = None,
        classification_target: str = "related",
        label_noise: float = 0.0,
        label_fraction: dict[str, float] | None = None,
        seed: int = 0,
        dense: bool = False,
        generator_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = set(self.tasks) - {*TASK_NAMES, *DENSE_TASK_NAMES}
        if unknown:
            raise ValueError(
                f"data.tasks has unknown task(s) {sorted(unknown)}; Scenes labels "
                f"{[*TASK_NAMES, *DENSE_TASK_NAMES]}."
            )
        if not self.named_tasks:  # follow the data: the tasks this set labels
            self.tasks = (*TASK_NAMES, *(DENSE_TASK_NAMES if dense else ()))
        elif not dense and set(self.tasks) & set(DENSE_TASK_NAMES):
            raise ValueError(
                f"data.tasks names {sorted(set(self.tasks) & set(DENSE_TASK_NAMES))}, which "
                "Scenes labels only with data.init_args.dense true (see "
                "configs/experiment/dense.yaml)."
            )
        self.root = Path(root)
        self.config = ScenesConfig(
            image_size=self.image_size, num_train=num_train, num_val=num_val,
            num_test=num_test, num_classes=num_classes, min_objects=min_objects,
            max_objects=max_objects, min_object_size=min_object_size,
            max_object_size=max_object_size, classification_target=classification_target,
            label_noise=label_noise, label_fraction=tuple((label_fraction or {}).items()),
            seed=seed, dense=dense,
        )
        self.generator_workers = generator_workers
        self.dataset_dir: Path | None = None

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        objects = list(self.config.class_names)
        ids = list(range(1, len(objects) + 1))  # COCO category ids of the written dataset
        info = coco_task_info(list(self.config.image_class_names), objects, ids)
        info.update({task: {} for task in DENSE_TASK_NAMES})  # regression: no classes
        return {task: info[task] for task in self.tasks}

    def prepare_data(self) -> None:
        """Generate the dataset unless a complete copy with the same fingerprint exists."""
        ensure_scenes(self.config, self.root, num_workers=self.generator_workers)

    def setup(self, stage: str | None = None) -> None:
        self.dataset_dir = ensure_scenes(self.config, self.root, num_workers=0)
        for split in ("train", "val", "test"):
            if split in self.datasets:
                continue
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
            self.datasets[split] = CocoMultiTaskDataset(
                self.dataset_dir / f"{split}.json", self.dataset_dir / split,
                tasks=self.tasks, transforms=NamedSource("scenes", transforms),
            )


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
            :mod:`mtl_lightning.data.dense_map_files`); default: the annotation file's own
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


__all__ = ["CocoDataModule", "MultiTaskDataModule", "NamedSource", "ScenesDataModule",
           "tasks_in_file"]
