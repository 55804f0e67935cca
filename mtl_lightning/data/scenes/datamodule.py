"""The data module of the procedural Scenes benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtl_lightning.data.base import MultiTaskDataModule, NamedSource
from mtl_lightning.data.coco.dataset import TASK_NAMES, CocoMultiTaskDataset, coco_task_info
from mtl_lightning.data.scenes.generator import DENSE_TASK_NAMES, ScenesConfig, ensure_scenes


class ScenesDataModule(MultiTaskDataModule):
    """The procedural Scenes benchmark, generated once into ``root`` and read back as COCO.

    Args:
        root: folder holding generated datasets (one sub-folder per config fingerprint).
        num_train, num_val, num_test, num_classes, min_objects, max_objects,
        min_object_size, max_object_size, classification_target, label_noise,
        label_fraction, seed: the generator's knobs (see ``ScenesConfig``).
        dense: also render depth and surface normals and shade the images by them (see
            :mod:`mtl_lightning.data.scenes.dense`); the set then labels five tasks.
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


__all__ = ["ScenesDataModule"]
