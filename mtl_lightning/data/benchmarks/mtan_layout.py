"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout of MTAN (Liu et al. 2019,
"End-to-End Multi-Task Learning with Attention"), which LibMTL and most multi-task papers
train on::

    <root>/{train,val}/image/<i>.npy    H x W x 3 float in [0, 1]
    <root>/{train,val}/label/<i>.npy    H x W class ids, -1 = ignore      (segmentation)
    <root>/{train,val}/depth/<i>.npy    H x W x 1 float, 0 = no ground truth   (depth)
    <root>/{train,val}/normal/<i>.npy   H x W x 3 float, zero = no ground truth (normals; NYUv2)

NYUv2 (Silberman et al. 2012; 13 classes of Couprie et al. 2013) is 288 x 384 there,
795 training and 654 validation images. Cityscapes (Cordts et al. 2016) is 128 x 256, its
labels under ``label_7`` (7 categories) or ``label_19`` (19 classes) (some copies call the
7-class folder ``label``), and its ``depth`` is inverse depth (disparity), 0 = invalid.

Every file of a sample is checked when the dataset is built (missing files are named, the
first few of them) and when it is read (shape and dtype, NaNs: one sentence naming the
file). Class ``-1`` becomes the ignore index 255; there is no background class (class 0 is a
real class, NYUv2's "bed").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.coco.validation import DataError
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap

#: The 13 classes of NYUv2 (Couprie et al. 2013), in the order of MTAN's label ids 0..12.
NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                 "picture", "sofa", "table", "tv", "wall", "window")
#: Cityscapes' 7 categories (void excluded), MTAN's ``label_7`` ids 0..6.
CITYSCAPES_CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human",
                         "vehicle")
#: Cityscapes' 19 evaluation classes (train ids 0..18), MTAN's ``label_19``.
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole",
                      "traffic light", "traffic sign", "vegetation", "terrain", "sky",
                      "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
#: task -> what its folder holds (how a file becomes a target)
KINDS = {"segmentation": "label", "depth": "depth", "normals": "normal"}


def _numeric(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


class MtanLayoutDataset(Dataset):
    """One split of an MTAN-layout benchmark.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``train`` or ``val``.
        folders: task -> its folder name inside the split (e.g. ``{"segmentation": "label",
            "depth": "depth", "normals": "normal"}``).
        num_classes: segmentation classes; larger label ids are refused.
        transforms: the joint transforms (``SampleTransform``).
        source: the name that overlays and predictions carry (``meta["source"]``).
    """

    def __init__(self, root: str | Path, split: str, folders: dict[str, str],
                 num_classes: int | None = None, transforms: Any = None,
                 source: str = "benchmark") -> None:
        self.root = Path(root)
        self.split_dir = self.root / split
        self.folders = dict(folders)
        self.num_classes = num_classes
        self.transforms = transforms
        self.source = source
        images = self.split_dir / "image"
        if not images.is_dir():
            raise DataError(
                f"'{images}' is not a folder: data.root must hold {split}/image/<i>.npy "
                f"(the MTAN layout); see docs/field-benchmarks.md."
            )
        self.stems = [p.stem for p in sorted(images.glob("*.npy"), key=_numeric)]
        if not self.stems:
            raise DataError(f"No .npy images in '{images}'.")
        for task, folder in self.folders.items():
            missing = [f"{folder}/{stem}.npy" for stem in self.stems
                       if not (self.split_dir / folder / f"{stem}.npy").is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} of {len(self.stems)} {split} images have no {task} file "
                    f"in '{self.split_dir}' (first: {', '.join(missing[:3])}); restore them or "
                    f"remove {task} from data.tasks."
                )

    def __len__(self) -> int:
        return len(self.stems)

    def _load(self, folder: str, stem: str) -> np.ndarray:
        path = self.split_dir / folder / f"{stem}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"Cannot read '{path}' as a .npy array ({error}); "
                            "replace the file.") from None
        if array.dtype.kind not in "fiub":
            raise DataError(f"'{path}' holds {array.dtype} values, not numbers; replace it.")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"'{path}' contains NaN or infinite values; replace the file "
                            "(invalid pixels are 0 in depth and normal maps, -1 in labels).")
        return array

    def _checked(self, array: np.ndarray, path: str, size: tuple[int, int],
                 channels: int | None) -> np.ndarray:
        """``array`` as H x W (``channels`` None) or H x W x channels, or one sentence."""
        if channels is None and array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        expected = size if channels is None else (*size, channels)
        if channels == 1 and array.ndim == 2:
            array = array[..., None]
        if tuple(array.shape) != expected:
            raise DataError(
                f"'{self.split_dir / path}' has shape {tuple(array.shape)}; the image is "
                f"{size[0]} x {size[1]}, so it must be {' x '.join(map(str, expected))}."
            )
        return array

    def read(self, index: int) -> dict[str, Any]:
        """The sample before transforms: a float image in [0, 1] and each task's target."""
        stem = self.stems[index]
        image = self._load("image", stem).astype(np.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DataError(f"'{self.split_dir / 'image' / stem}.npy' has shape "
                            f"{image.shape}; an image must be H x W x 3.")
        size = (image.shape[0], image.shape[1])
        targets: dict[str, Any] = {}
        for task, folder in self.folders.items():
            kind = KINDS[task]
            path = f"{folder}/{stem}.npy"
            array = self._load(folder, stem)
            if kind == "label":
                labels = self._checked(array, path, size, None).astype(np.int64)
                top = self.num_classes if self.num_classes is not None else IGNORE_INDEX
                bad = (labels >= top) | (labels < -1)
                if bad.any():
                    raise DataError(
                        f"'{self.split_dir / path}' has label ids outside -1..{top - 1} "
                        f"(e.g. {int(labels[bad][0])}); use the label set data.label_set names."
                    )
                labels[labels == -1] = IGNORE_INDEX
                targets[task] = tv_tensors.Mask(torch.from_numpy(labels.astype(np.uint8)))
            elif kind == "depth":
                depth = self._checked(array, path, size, 1).astype(np.float32)
                targets[task] = DepthMap(torch.from_numpy(np.moveaxis(depth, -1, 0).copy()))
            else:
                normals = self._checked(array, path, size, 3).astype(np.float32)
                targets[task] = NormalMap(torch.from_numpy(np.moveaxis(normals, -1, 0).copy()))
        tensor = torch.from_numpy(np.moveaxis(image, -1, 0).copy()).clamp(0, 1)
        return {
            "image": tv_tensors.Image(tensor),
            "targets": targets,
            "has": dict.fromkeys(targets, True),
            "meta": {"image_id": stem, "source": self.source, "orig_size": size,
                     "path": str(self.split_dir / "image" / f"{stem}.npy")},
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.read(index)
        return self.transforms(sample) if self.transforms is not None else sample


class _MtanLayoutDataModule(MultiTaskDataModule):
    """The shared part of the NYUv2 and Cityscapes data modules: ``train`` and ``val``
    splits (the papers report on ``val``; it is also used as ``test``)."""

    source = "benchmark"

    def __init__(self, root: str, tasks: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(tasks=tuple(tasks), **kwargs)
        self.root = Path(root)

    def folders(self) -> dict[str, str]:
        raise NotImplementedError

    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            if task == "segmentation":
                names = list(self.class_names())
                info[task] = {"num_classes": len(names), "class_names": names}
            else:
                info[task] = {}
        return info

    def setup(self, stage: str | None = None) -> None:
        for split, folder in (("train", "train"), ("val", "val"), ("test", "val")):
            if split in self.datasets:
                continue
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
            self.datasets[split] = MtanLayoutDataset(
                self.root, folder, self.folders(), num_classes=len(self.class_names()),
                transforms=transforms, source=self.source)


    def check_files(self, limit: int = 20) -> list[str]:
        """Every file of the train and val splits read once (``check-data``): one sentence
        per bad file; a split with missing files is one sentence naming the first few."""
        found: list[str] = []
        for split in ("train", "val"):
            try:
                dataset = MtanLayoutDataset(self.root, split, self.folders(),
                                            num_classes=len(self.class_names()))
            except DataError as error:
                found.append(str(error))
                continue
            for index in range(len(dataset)):
                try:
                    dataset.read(index)
                except DataError as error:
                    found.append(str(error))
        return found[:limit]


class NYUv2DataModule(_MtanLayoutDataModule):
    """NYUv2 in the MTAN layout: segmentation (13 classes), depth and surface normals.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        tasks: any of ``segmentation``, ``depth``, ``normals``.
        **kwargs: loader and transform options of ``MultiTaskDataModule`` (``image_size``
            is the square size images are resized to; the protocol keeps 288 x 384, see
            ``configs/data/nyuv2.yaml``).
    """

    source = "nyuv2"

    def __init__(self, root: str = "data/nyuv2",
                 tasks: tuple[str, ...] = ("segmentation", "depth", "normals"),
                 **kwargs: Any) -> None:
        super().__init__(root, tasks, **kwargs)

    def folders(self) -> dict[str, str]:
        names = {"segmentation": "label", "depth": "depth", "normals": "normal"}
        return {task: names[task] for task in self.tasks}

    def class_names(self) -> tuple[str, ...]:
        return NYUV2_CLASSES


class CityscapesDataModule(_MtanLayoutDataModule):
    """Cityscapes in the MTAN layout: segmentation (7 categories or 19 classes) and depth
    (disparity).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        label_set: 7 (``label_7``, or ``label`` in older copies) or 19 (``label_19``).
        tasks: any of ``segmentation``, ``depth``.
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    source = "cityscapes"

    def __init__(self, root: str = "data/cityscapes", label_set: int = 7,
                 tasks: tuple[str, ...] = ("segmentation", "depth"), **kwargs: Any) -> None:
        if label_set not in (7, 19):
            raise ValueError(f"data.label_set must be 7 or 19, got {label_set}.")
        self.label_set = label_set
        super().__init__(root, tasks, **kwargs)

    def folders(self) -> dict[str, str]:
        label = f"label_{self.label_set}"
        if self.label_set == 7 and not (self.root / "train" / label).is_dir() and (
                self.root / "train" / "label").is_dir():
            label = "label"
        names = {"segmentation": label, "depth": "depth"}
        return {task: names[task] for task in self.tasks}

    def class_names(self) -> tuple[str, ...]:
        return CITYSCAPES_CATEGORIES if self.label_set == 7 else CITYSCAPES_CLASSES
