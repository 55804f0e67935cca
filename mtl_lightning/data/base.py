"""The base class of every data module: loaders, transforms and the class information the
model needs.

Every data module exposes ``task_info`` (task instance name -> ``{"type", "num_classes",
"class_names"}``, ``type`` omitted where it equals the name); the CLI links it into the model,
so class counts always come from the data. Samples' ``targets`` and ``has`` are keyed by the
same instance names, so a reader can label two tasks of one type (``drivable`` and ``lanes``,
both segmentation).
"""

from __future__ import annotations

import logging
import time
from pathlib import PurePath
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader, Dataset

from mtl_lightning.data.batch_augmentation import batch_augmentation as _batch_augmentation
from mtl_lightning.data.batch_augmentation import worker_transforms
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.constants import COCO_TASK_NAMES
from mtl_lightning.data.images import DEFAULT_MAX_PIXELS
from mtl_lightning.data.prediction_images import ImageFolderForPrediction
from mtl_lightning.data.sample_cache_budget import DEFAULT_CACHE_BUDGET, check_cache_budget
from mtl_lightning.data.transforms import ResizeMode, eval_transforms, train_transforms
from mtl_lightning.data.workers import freeze_in_worker

log = logging.getLogger(__name__)


class NamedSource:
    """A sample transform that first records the sample's source in ``meta["source"]``.

    With ``meta["image_id"]`` it names a sample uniquely even when several data sets are
    shown together (overlay file names);
    :class:`~mtl_lightning.data.sources.multisource.SourceDataset` sets the same key for each
    of ``data.sources``.
    """

    def __init__(self, name: str, transforms: Any = None) -> None:
        self.name, self.transforms = name, transforms

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample = {**sample, "meta": {**sample.get("meta", {}), "source": self.name}}
        return self.transforms(sample) if self.transforms is not None else sample



class MultiTaskDataModule(LightningDataModule):
    """The base class of every data module: its interface and shared loader options.

    The interface the model, the CLI and the callbacks rely on (the CLI accepts only
    subclasses as ``data.class_path``):

    - :attr:`task_info`: task instance -> ``{"type", "num_classes", "class_names", ...}``,
      known before ``setup`` (the CLI links it into the model);
    - :attr:`datasets`: split name (``train``, ``val``, ``test``, ``predict``) -> dataset,
      filled by ``setup`` (and ``predict_dataloader``);
    - :meth:`has_split`: whether ``setup`` produced a split (a COCO test set is optional).

    The init arguments of every subclass are saved as hyper-parameters
    (``save_hyperparameters``), so a checkpoint holds them
    (``datamodule_hyper_parameters``): ``export`` reads the image size from there.

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
        # Every subclass's init arguments too (Lightning collects the whole __init__ chain);
        # not logged: the run's config already is, and the model's "tasks" differ from ours.
        self.save_hyperparameters(logger=False)
        for key, value in self.hparams.items():  # plain values: checkpoints load weights_only
            self.hparams[key] = apply_to_collection(value, PurePath, str)
        self.named_tasks = tasks is not None  # named by the user, else followed from the data
        self.tasks = tuple(tasks) if tasks is not None else COCO_TASK_NAMES
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

    #: Split name -> dataset, filled by ``setup`` (and ``predict_dataloader``).
    datasets: dict[str, Dataset]

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        """Task -> ``{"num_classes", "class_names"}``, linked into the model by the CLI."""
        raise NotImplementedError(f"{type(self).__name__} must define task_info.")

    def has_split(self, split: str) -> bool:
        """Whether ``setup`` produced a ``split`` dataset (a COCO test set is optional)."""
        return split in self.datasets

    def _cache(self, split: str, dataset: Dataset) -> None:
        """With ``cache_samples``, decode the split's samples now, once (see
        :meth:`~mtl_lightning.data.coco.dataset.CocoMultiTaskDataset.cache_in_memory`).
        Called when the split's first loader is made: before its workers fork, and never for
        a split that is not read."""
        cacheable = hasattr(dataset, "cache_in_memory")  # a COCO reader, not the predict folder
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


__all__ = ["MultiTaskDataModule", "NamedSource"]
