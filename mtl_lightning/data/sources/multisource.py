"""A data module that trains on several datasets, each labelling only some tasks.

Sources are plain dicts, so they read naturally in YAML and need no registration::

    data:
      class_path: mtl_lightning.data.sources.multisource.MultiSourceDataModule
      init_args:
        image_size: 256
        sampling_mode: max_size_cycle
        sources:
          - {kind: segmentation_folder, name: camvid, split: train,
             images: data/camvid/train, masks: data/camvid/trainannot,
             class_names: [background, road, car]}
          - {kind: classification_folder, name: scenes, split: train, root: data/places/train}
          - {kind: voc, name: voc, split: train, images: data/VOC/JPEGImages,
             annotations: data/VOC/Annotations, ids: data/VOC/ImageSets/Main/train.txt}
          - {kind: coco, name: fruits, split: val, annotation_file: data/f/val.json,
             image_root: data/f/images, tasks: [detection]}

Each source is ``{"kind", "name", "split"}`` plus the arguments of its reader (see
``SOURCE_KINDS``; a ``coco`` source also takes ``tasks``, the tasks it should label). Every
sample carries a target for every task of ``data.tasks``: tasks its source does not label get
``has[task] = False`` and a placeholder, so the model masks their loss and metrics.

Classes are reconciled by name (see :func:`reconcile_classes`): within a split every source
labelling a task must have the same class names (order may differ); the data module uses the
first train source's order and remaps the others' labels, before the transforms. Different
names within a split are an error, never a silent union; across splits a class missing from
one split (a VOC val split without the rarest class) is a warning that lists it.

Training: one DataLoader per train source (``batch_size`` images each), combined by Lightning's
``CombinedLoader`` in ``sampling_mode``; it yields ``{source: batch}`` and
:meth:`MultiSourceDataModule.on_after_batch_transfer` concatenates those into ONE batch. The
hook, rather than a wrapper iterable, keeps the real ``CombinedLoader`` visible to Lightning,
which therefore still inserts a ``DistributedSampler`` into every source's loader under DDP
and knows the epoch length. ``"sequential"`` (every source in turn) is refused by
``Trainer.fit`` as a ``CombinedLoader`` mode, so it is one loader over the concatenated
sources whose sampler shuffles within each source and visits sources in order.

Validation and test: ``eval_loaders="concat"`` (default) gives one loader over all the split's
sources in order, which works with any module and keeps log keys unchanged; the module only
updates each task's metrics on samples with ``has[task]``, so each source is evaluated on the
tasks it labels. ``"per_source"`` gives a list of loaders, one per source; Lightning then
requires ``validation_step``/``test_step`` to take ``dataloader_idx`` and suffixes step-logged
keys with ``/dataloader_idx_N``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.coco.dataset import TASK_NAMES, CocoMultiTaskDataset, coco_task_info
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.constants import SPLITS
from mtl_lightning.data.containers import copy_containers, tensor_bytes
from mtl_lightning.data.sample_cache_budget import check_cache_budget
from mtl_lightning.data.sources.folders import (
    ClassificationFolder,
    DataSourceError,
    SegmentationFolder,
    VocDetectionFolder,
    placeholder_target,
)
from mtl_lightning.data.workers import freeze_in_worker
from mtl_lightning.tasks import task_class

log = logging.getLogger(__name__)
SamplingMode = Literal["max_size_cycle", "min_size", "max_size", "sequential"]
EvalLoaders = Literal["concat", "per_source"]
Batch = dict[str, Any]

SOURCE_KINDS: dict[str, type] = {
    "coco": CocoMultiTaskDataset,
    "segmentation_folder": SegmentationFolder,
    "classification_folder": ClassificationFolder,
    "voc": VocDetectionFolder,
}


@dataclass
class Source:
    """One configured source: its reader (untransformed) and the classes of each task it labels."""

    name: str
    kind: str
    split: str
    reader: Dataset
    classes: dict[str, list[str]]
    #: segmentation class 0 is a background (matched by position), not a named class
    background: bool = True


def _coco_classes(reader: CocoMultiTaskDataset) -> dict[str, list[str]]:
    """The class names of each task the COCO source labels (a task without classes in the
    file, e.g. classification of a file with no image labels, is not labelled)."""
    info = coco_task_info(reader.image_class_names, reader.category_names,
                          reader.category_ids)
    names = {task: entry["class_names"] for task, entry in info.items()}
    return {task: list(names[task]) for task in reader.tasks if task in names
            and names[task][int(task_class(task).background_class):]}


def build_source(spec: Mapping[str, Any], position: int) -> Source:
    """Validate one ``data.sources`` entry and build its reader (no transforms yet)."""
    where = f"data.sources[{position}]"
    if not isinstance(spec, Mapping):
        raise DataSourceError(f"{where} must be a mapping with kind, name and split.")
    options = dict(spec)
    kind, name, split = options.pop("kind", None), options.pop("name", None), options.pop(
        "split", None)
    if kind not in SOURCE_KINDS:
        raise DataSourceError(f"{where} has kind {kind!r}; use one of {list(SOURCE_KINDS)}.")
    if not isinstance(name, str) or not name:
        raise DataSourceError(f"{where} needs a non-empty 'name' (used in logs and meta).")
    if split not in SPLITS:
        raise DataSourceError(f"{where} ('{name}') has split {split!r}; use one of {SPLITS}.")
    reader_class = SOURCE_KINDS[kind]
    parameters = inspect.signature(reader_class).parameters
    allowed = [p for p in parameters if p != "transforms"]
    required = [p for p, v in parameters.items() if v.default is inspect.Parameter.empty]
    unknown = sorted(set(options) - set(allowed))
    missing = [p for p in required if p not in options]
    if unknown or missing:
        problems = [f"has unknown option(s) {unknown}"] if unknown else []
        problems += [f"lacks {missing}"] if missing else []
        problem = " and ".join(problems)
        raise DataSourceError(
            f"{where} ('{name}', kind {kind}) {problem}; a {kind} source takes {allowed}."
        )
    if kind == "coco":
        if not Path(options["annotation_file"]).is_file():
            raise DataSourceError(
                f"{where} ('{name}'): annotation_file '{options['annotation_file']}' does not "
                "exist; check the path."
            )
        reader = CocoMultiTaskDataset(**options)
        classes = _coco_classes(reader)
    else:
        reader = reader_class(**options)
        classes = {t: info["class_names"] for t, info in reader.task_info.items()}
    return Source(name=name, kind=kind, split=split, reader=reader, classes=classes,
                  background=getattr(reader, "has_background", True))


def reconcile_classes(
    sources: Sequence[Source], tasks: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, torch.Tensor]]]:
    """One class list per task, and per source the label remaps onto it.

    Classes are matched by name. Within a split, every source labelling a task must have the
    same set of names (two data sets that label a task differently must not be merged
    silently: an object one of them never labels would be trained as background). Across
    splits a class may be missing from one (a VOC val split without a rare class, or one
    the train split lacks): the list is the union, train's order first, and one warning per
    split lists what it lacks. Segmentation index 0 is background whatever it is called,
    unless the sources have no background class (``background_index: null``); then every
    class is matched by name, and background and no-background sources cannot be mixed.

    Returns ``task_info`` and ``{source: {task: lookup}}`` where
    ``lookup[source_label] == module_label`` (segmentation: over mask values 0..255), only for
    sources whose list differs from the module's.
    """
    task_info: dict[str, dict[str, Any]] = {}
    remaps: dict[str, dict[str, torch.Tensor]] = {s.name: {} for s in sources}
    order = {split: i for i, split in enumerate(SPLITS)}
    for task in tasks:
        labelling = sorted((s for s in sources if task in s.classes),
                           key=lambda s: order[s.split])  # stable: config order per split
        if not labelling:
            raise DataSourceError(
                f"data.tasks includes '{task}' but no source in data.sources labels it; add a "
                "source for it or remove it from data.tasks."
            )
        background = _common_background(task, labelling)
        skip = 1 if background else 0  # background is matched by position
        for source in labelling:
            names = source.classes[task]
            if len(set(names)) != len(names):
                raise DataSourceError(
                    f"Source '{source.name}' names a {task} class twice ({names}); give every "
                    "class a unique name."
                )
        per_split: dict[str, Source] = {}
        for source in labelling:
            first = per_split.setdefault(source.split, source)
            mine, theirs = set(source.classes[task][skip:]), set(first.classes[task][skip:])
            if mine != theirs:
                raise DataSourceError(
                    f"Sources '{first.name}' and '{source.name}' label {task} with different "
                    f"classes (only in '{first.name}': {sorted(theirs - mine)}, only in "
                    f"'{source.name}': {sorted(mine - theirs)}); give every {source.split} "
                    f"source that labels {task} the same class names (their order may "
                    "differ; a VOC source takes class_names)."
                )
        reference = list(labelling[0].classes[task])
        for source in labelling[1:]:
            reference += [n for n in source.classes[task][skip:] if n not in reference]
        if len(per_split) > 1:
            _warn_missing(task, per_split, reference[skip:], skip)
        for source in labelling:
            names = source.classes[task]
            if names != reference:
                remaps[source.name][task] = task_class(task).class_lookup(names, reference,
                                                                          background)
        task_info[task] = {"num_classes": len(reference), "class_names": reference}
    return task_info, remaps


def _common_background(task: str, labelling: Sequence[Source]) -> bool:
    """Whether the sources of a task whose class 0 is a background (segmentation) have a
    background class (they must agree)."""
    if not task_class(task).background_class:
        return False
    with_background = {s.name for s in labelling if s.background}
    if with_background and len(with_background) < len(labelling):
        without = sorted({s.name for s in labelling} - with_background)
        raise DataSourceError(
            f"Segmentation sources {sorted(with_background)} have a background class and "
            f"{without} have none (background_index: null); use one convention for all."
        )
    return bool(with_background)


def _warn_missing(
    task: str, per_split: Mapping[str, Source], classes: list[str], skip: int
) -> None:
    """One warning per split that lacks some of the task's classes."""
    for split, source in per_split.items():
        missing = [n for n in classes if n not in source.classes[task][skip:]]
        if not missing:
            continue
        consequence = ("the model has them but never learns them" if split == "train" else
                       f"they are not evaluated on {split}")
        rank_zero_warn(
            f"The {split} sources (e.g. '{source.name}') label {task} without the classes "
            f"{missing} that other splits have; classes are matched by name, {consequence}. "
            "Give the source class_names to fix the list if that is not what you meant."
        )


def remap_target(
    task: str, target: Any, lookup: torch.Tensor, num_classes: int | None = None
) -> Any:
    """A labelled target of task (type) ``task`` with its class indices mapped through
    ``lookup``, as the task type does it (a multi-hot vector grows to ``num_classes``, the
    module's class count)."""
    return task_class(task).remap_target(target, lookup, num_classes)


class SourceDataset(Dataset):
    """One source in the module's terms: tasks filled, labels remapped, then transformed.

    Keeps exactly ``tasks`` (adding placeholders for tasks the reader does not produce),
    remaps labelled targets to the module's class order and adds ``meta["source"]`` (the
    source's name; with ``meta["image_id"]`` it names a sample uniquely across sources).
    :meth:`cache_in_memory` keeps the untransformed samples, as ``data.cache_samples`` does.
    """

    def __init__(
        self, source: Source, tasks: Sequence[str], remaps: Mapping[str, torch.Tensor],
        transforms: Any = None, num_classes: Mapping[str, int] | None = None,
    ) -> None:
        self.source, self.tasks, self.remaps = source, tuple(tasks), dict(remaps)
        self.transforms = transforms
        self.num_classes = dict(num_classes or {})
        self._cache: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.source.reader)

    def cache_in_memory(self) -> float:
        """Read every sample once (before the random transforms) and keep it; returns MB."""
        self._cache = [self.untransformed(i) for i in range(len(self))]
        return sum(tensor_bytes(sample) for sample in self._cache) / 2**20

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = (self.untransformed(index) if self._cache is None
                  else copy_containers(self._cache[index]))
        return self.transforms(sample) if self.transforms is not None else sample

    def untransformed(self, index: int) -> dict[str, Any]:
        """Sample ``index`` with the module's tasks and classes, before the transforms."""
        sample = self.source.reader[index]
        height, width = sample["image"].shape[-2:]
        targets, has = {}, {}
        for task in self.tasks:
            target = sample["targets"].get(task)
            labelled = target is not None and bool(sample["has"].get(task, False))
            if target is None:
                target = placeholder_target(task, int(height), int(width))
            if labelled and task in self.remaps:
                target = remap_target(task, target, self.remaps[task],
                                      self.num_classes.get(task))
            targets[task], has[task] = target, labelled
        return {**sample, "targets": targets, "has": has,
                "meta": {**sample.get("meta", {}), "source": self.source.name}}


class SourceBlockSampler(Sampler[int]):
    """Indices of a ConcatDataset: every source in turn, shuffled within each source."""

    def __init__(self, sizes: Sequence[int], shuffle: bool = True) -> None:
        self.sizes, self.shuffle = list(sizes), shuffle

    def __len__(self) -> int:
        return sum(self.sizes)

    def __iter__(self) -> Iterator[int]:
        offset = 0
        for size in self.sizes:
            order = torch.randperm(size) if self.shuffle else torch.arange(size)
            yield from (order + offset).tolist()
            offset += size


def merge_batches(batches: Mapping[str, Batch | None]) -> Batch:
    """Concatenate per-source batches (same task keys) into one; ``None`` (exhausted) skipped."""
    parts = [batch for batch in batches.values() if batch is not None]
    shapes = {tuple(batch["image"].shape[1:]) for batch in parts}
    if len(shapes) > 1:
        raise DataSourceError(
            f"Training sources {list(batches)} give images of different sizes {sorted(shapes)}; "
            "use transforms that resize every source to one image_size."
        )
    targets: dict[str, Any] = {}
    for task, first in parts[0]["targets"].items():
        values = [batch["targets"][task] for batch in parts]
        targets[task] = torch.cat(values) if isinstance(first, torch.Tensor) else [
            item for value in values for item in value
        ]
    return {
        "image": torch.cat([batch["image"] for batch in parts]),
        "targets": targets,
        "has": {task: torch.cat([batch["has"][task] for batch in parts])
                for task in parts[0]["has"]},
        "meta": [meta for batch in parts for meta in batch.get("meta", [])],
    }


class MultiSourceDataModule(MultiTaskDataModule):
    """Several datasets, each labelling some tasks, trained as one multi-task stream.

    Args:
        sources: one dict per source: ``kind`` (``coco``, ``segmentation_folder``,
            ``classification_folder``, ``voc``), a unique ``name``, ``split`` (``train``,
            ``val``, ``test``) and the reader's own arguments (paths, class names, ...).
        sampling_mode: how train sources are combined per step: ``max_size_cycle`` (until the
            longest ends, shorter ones restart), ``min_size`` (until the shortest ends),
            ``max_size`` (until the longest ends, exhausted ones drop out of the batch) or
            ``sequential`` (one source after another).
        eval_loaders: ``concat`` (one validation/test loader over the split's sources) or
            ``per_source`` (a list of loaders; the model's steps must take ``dataloader_idx``).
        tasks: tasks to train (default: every task some source labels).
        cache_samples: (of ``MultiTaskDataModule``) read every source of a split once, when
            the split's first loader is made, and keep its untransformed samples in memory.
        **kwargs: loader and transform options of ``MultiTaskDataModule``; ``batch_size`` and
            ``num_workers`` apply to each train source's loader (a step sees ``batch_size``
            images per train source, except in ``sequential`` mode).
    """

    def __init__(
        self,
        sources: list[dict[str, Any]],
        sampling_mode: SamplingMode = "max_size_cycle",
        eval_loaders: EvalLoaders = "concat",
        tasks: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tasks=tasks, **kwargs)
        if sampling_mode not in SamplingMode.__args__:
            raise DataSourceError(
                f"data.sampling_mode is {sampling_mode!r}; use one of {SamplingMode.__args__}."
            )
        if eval_loaders not in EvalLoaders.__args__:
            raise DataSourceError(
                f"data.eval_loaders is {eval_loaders!r}; use one of {EvalLoaders.__args__}."
            )
        self.sampling_mode, self.eval_loaders = sampling_mode, eval_loaders
        if not sources:
            raise DataSourceError("data.sources is empty; give at least one train source.")
        self.sources = [build_source(spec, i) for i, spec in enumerate(sources)]
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DataSourceError(f"data.sources repeats the name(s) {repeated}; make them unique.")
        if tasks is None:
            self.tasks = tuple(t for t in TASK_NAMES if any(t in s.classes for s in self.sources))
        self._task_info, self.remaps = reconcile_classes(self.sources, self.tasks)
        self.source_datasets: dict[str, dict[str, SourceDataset]] = {}

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        """Task -> ``{"num_classes", "class_names"}``, reconciled across sources by name."""
        return {task: dict(info) for task, info in self._task_info.items()}

    def setup(self, stage: str | None = None) -> None:
        """Wrap every source with the module's tasks, remaps and its split's transforms."""
        num_classes = {task: info["num_classes"] for task, info in self._task_info.items()}
        for split in SPLITS:
            if split in self.source_datasets:
                continue
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
            datasets = {
                s.name: SourceDataset(s, self.tasks, self.remaps[s.name], transforms,
                                      num_classes)
                for s in self.sources if s.split == split
            }
            self.source_datasets[split] = datasets
            if datasets:
                self.datasets[split] = ConcatDataset(list(datasets.values()))

    def _datasets(self, split: str) -> dict[str, SourceDataset]:
        if split not in self.source_datasets:
            raise RuntimeError("The data module is not set up; call setup() first.")
        if not self.source_datasets[split]:
            raise DataSourceError(
                f"data.sources has no source with split '{split}'; add one to run that stage."
            )
        waiting = [d for d in self.source_datasets[split].values() if d._cache is None]
        if self.cache_samples and waiting:
            check_cache_budget([(d.untransformed, len(d)) for d in waiting],
                               f"the {split} split", self.cache_budget)
        for dataset in self.source_datasets[split].values():
            if self.cache_samples and dataset._cache is None:  # when its first loader is made
                megabytes = dataset.cache_in_memory()
                log.info("data.cache_samples: %d samples of source '%s' held, %.0f MB",
                         len(dataset), dataset.source.name, megabytes)
        return self.source_datasets[split]

    def _make_loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
            drop_last=shuffle and len(dataset) > batch_size, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            collate_fn=collate_multitask, worker_init_fn=freeze_in_worker,
        )

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        datasets = self._datasets("train")
        if self.sampling_mode == "sequential":
            sizes = [len(d) for d in datasets.values()]
            return self._make_loader(ConcatDataset(list(datasets.values())), self.batch_size,
                                     sampler=SourceBlockSampler(sizes))
        loaders = {name: self._make_loader(d, self.batch_size, shuffle=True)
                   for name, d in datasets.items()}
        return CombinedLoader(loaders, mode=self.sampling_mode)

    def _eval_loaders(self, split: str) -> DataLoader | list[DataLoader]:
        datasets = list(self._datasets(split).values())
        if self.eval_loaders == "per_source" and len(datasets) > 1:
            return [self._make_loader(d, self.eval_batch_size) for d in datasets]
        return self._make_loader(ConcatDataset(datasets), self.eval_batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.source_datasets.get("val"):
            return []  # no validation source: Lightning skips validation
        return self._eval_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Concatenate the CombinedLoader's ``{source: batch}`` into one batch (on device)."""
        if isinstance(batch, dict) and "image" not in batch:
            batch = merge_batches(batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)  # batch_augmentation


__all__ = [
    "SOURCE_KINDS",
    "MultiSourceDataModule",
    "Source",
    "SourceBlockSampler",
    "SourceDataset",
    "build_source",
    "merge_batches",
    "reconcile_classes",
    "remap_target",
]
