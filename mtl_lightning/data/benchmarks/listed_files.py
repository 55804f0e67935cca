"""The shared part of the benchmarks stored as one file per sample and task, named by id.

NYUD-v2 (ATRC layout), PASCAL-Context (five-task layout) and BDD100K (YOLOP layout) keep,
for every sample id, an image and one label file per task in a folder of its own. Their
readers differ only in where a task's file of an id lives and how it becomes a target; this
module holds the rest:

- :class:`ListedFilesDataset`: the ids of one split, every task's file checked to exist when
  the dataset is built (missing files are counted and the first few named, in one
  sentence), a sample read on demand or from memory (``cache_samples``), and
  :meth:`~ListedFilesDataset.problems` that reads every file of the split and returns one
  sentence per bad file (what ``check-data`` prints).
- :class:`ListedFilesDataModule`: ``train`` / ``val`` splits (``test`` is ``val``, as the
  papers report), the same joint transforms as every data module, and ``check_files``.
- Readers of the file kinds these layouts use (PNG label maps, ``.npy`` arrays), each
  refusing a bad file with one sentence that names it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.data.containers import copy_containers, tensor_bytes
from mtl_lightning.data.images import ImageDecodeError, load_rgb
from mtl_lightning.shared.errors import DataError

log = logging.getLogger(__name__)

#: missing files named in the sentence that refuses a split (the count says how many more)
NAMED_MISSING = 3


def read_split_ids(path: Path) -> list[str]:
    """The sample ids of a split file (one id per line; blank lines skipped)."""
    if not path.is_file():
        raise DataError(f"The split file '{path}' does not exist: data.root must hold the "
                        "benchmark's published layout (see docs: 'Reproduce a published "
                        "table').")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"The split file '{path}' lists no sample ids.")
    return ids


def read_png(path: Path, channels: int | None = None) -> np.ndarray:
    """A PNG label map as an array: H x W (``channels`` None: one channel, 8 or 16 bit) or
    H x W x ``channels``; one sentence naming the file otherwise."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"Cannot read '{path}' as an image ({error}); replace the file.") from None
    if channels is None and array.ndim == 3 and array.shape[-1] in (3, 4):
        if not (array[..., :3] == array[..., :1]).all():
            raise DataError(f"'{path}' is a colour image; a label map has one channel "
                            "(re-save it as a greyscale or palette PNG).")
        array = array[..., 0]
    expected = 2 if channels is None else 3
    if array.ndim != expected or (channels is not None and array.shape[-1] < channels):
        what = "one channel" if channels is None else f"{channels} channels"
        raise DataError(f"'{path}' has shape {array.shape}; it must be H x W with {what}.")
    return array if channels is None else array[..., :channels]


def read_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array without NaNs; one sentence naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"Cannot read '{path}' as a .npy array ({error}); replace the file.") \
            from None
    if array.dtype.kind not in "fiub":
        raise DataError(f"'{path}' holds {array.dtype} values, not numbers; replace it.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"'{path}' contains NaN or infinite values; replace the file "
                        "(invalid pixels are 0 in depth maps).")
    return array


def check_size(array: np.ndarray, path: Path, size: tuple[int, int]) -> np.ndarray:
    """``array`` when its first two dimensions are the image's ``size``; else one sentence."""
    if tuple(array.shape[:2]) != tuple(size):
        raise DataError(f"'{path}' is {array.shape[0]} x {array.shape[1]} but its image is "
                        f"{size[0]} x {size[1]}; a label map must match its image.")
    return array


def class_mask(labels: np.ndarray, path: Path, num_classes: int) -> tv_tensors.Mask:
    """Class ids (255 = ignore) as a uint8 mask; ids outside ``0..num_classes-1`` other than
    255 are one sentence naming the file."""
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise DataError(f"'{path}' has label ids outside 0..{num_classes - 1} and 255 (e.g. "
                        f"{int(labels[bad][0])}); is it this benchmark's label file?")
    return tv_tensors.Mask(torch.from_numpy(labels.astype(np.uint8)))


#: reads one task's target from its file and the image size: (target, labelled)
TargetReader = Callable[[Path, tuple[int, int]], tuple[Any, bool]]


@dataclass(frozen=True)
class FileIn:
    """id -> ``folder/<id><suffix>``, the first of ``suffixes`` that exists (else the first):
    a picklable path rule, so loader workers started by spawn get it too."""

    folder: Path
    suffixes: tuple[str, ...]

    def __call__(self, sample_id: str) -> Path:
        paths = [self.folder / f"{sample_id}{suffix}" for suffix in self.suffixes]
        return next((path for path in paths if path.is_file()), paths[0])


class ListedFilesDataset(Dataset):
    """One split of a benchmark stored as one file per sample id and task.

    Args:
        ids: the split's sample ids.
        image_path: id -> its image file.
        files: task -> (id -> its label file, reader of that file). A reader returns the
            target and whether the sample is labelled for the task (e.g. PASCAL's human
            parts only on images with people).
        transforms: the joint transforms (``SampleTransform``).
        source: the name that overlays and predictions carry (``meta["source"]``).
        split: the split's name, for messages.
    """

    def __init__(self, ids: list[str], image_path: Callable[[str], Path],
                 files: dict[str, tuple[Callable[[str], Path], TargetReader]],
                 transforms: Any = None, source: str = "benchmark", split: str = "train") -> None:
        self.ids = list(ids)
        self.image_path = image_path
        self.files = dict(files)
        self.transforms = transforms
        self.source = source
        self.split = split
        self._cache: list[dict[str, Any]] | None = None
        for what, path_of in (("image", image_path),
                              *((task, path) for task, (path, _) in self.files.items())):
            missing = [str(path_of(i)) for i in self.ids if not path_of(i).is_file()]
            if missing:
                fix = ("restore them" if what == "image"
                       else f"restore them or remove {what} from data.tasks")
                raise DataError(
                    f"{len(missing)} of {len(self.ids)} {split} samples have no {what} file "
                    f"(first: {', '.join(missing[:NAMED_MISSING])}); {fix}.")

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> dict[str, Any]:
        """The sample before transforms: a uint8 image and each task's target."""
        sample_id = self.ids[index]
        path = self.image_path(sample_id)
        try:
            image = load_rgb(path, context=f"{self.split} id {sample_id}")
        except ImageDecodeError as error:
            raise DataError(str(error)) from None
        size = (int(image.shape[-2]), int(image.shape[-1]))
        targets: dict[str, Any] = {}
        has: dict[str, bool] = {}
        for task, (path_of, reader) in self.files.items():
            targets[task], has[task] = reader(path_of(sample_id), size)
        return {"image": tv_tensors.Image(image), "targets": targets, "has": has,
                "meta": {"image_id": sample_id, "source": self.source, "orig_size": size,
                         "path": str(path)}}

    def cache_in_memory(self) -> float:
        """Read every sample now and keep it (before the random transforms); returns the
        megabytes held. Called before the loader's workers fork, so they share it."""
        self._cache = [self.read(i) for i in range(len(self))]
        return sum(tensor_bytes(sample) for sample in self._cache) / 2**20

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = (self.read(index) if self._cache is None
                  else copy_containers(self._cache[index]))
        return self.transforms(sample) if self.transforms is not None else sample

    def problems(self, limit: int = 20) -> list[str]:
        """One sentence per sample whose files cannot be read (at most ``limit``)."""
        found: list[str] = []
        for index in range(len(self)):
            try:
                self.read(index)
            except DataError as error:
                found.append(str(error))
                if len(found) >= limit:
                    break
        return found


class ListedFilesDataModule(MultiTaskDataModule):
    """Train and val splits of a :class:`ListedFilesDataset` benchmark (``test`` reads val,
    the split the papers report).

    Subclasses give ``default_tasks``, ``task_info``, ``split_ids(split)``, ``image_path(id)``
    and ``files()`` (task -> (id -> path, reader)).
    """

    source = "benchmark"
    #: the tasks read when ``data.tasks`` is null: every task the benchmark labels
    default_tasks: tuple[str, ...] = ()
    #: split name -> the folder or list file it is read from (the papers' val is our test too)
    splits = {"train": "train", "val": "val", "test": "val"}

    def __init__(self, root: str, tasks: Iterable[str] | None = None, **kwargs: Any) -> None:
        # The tasks are instance names of this benchmark (``semseg``, ``drivable``), checked
        # here against what it labels rather than against the registry of task types.
        super().__init__(tasks=None, **kwargs)
        self.named_tasks = tasks is not None
        self.tasks = self.default_tasks if tasks is None else tuple(tasks)
        unknown = [task for task in self.tasks if task not in self.default_tasks]
        if unknown:
            raise ValueError(f"data.tasks names {unknown}; {type(self).__name__} labels "
                             f"{list(self.default_tasks)}.")
        self.root = Path(root)

    def split_ids(self, split: str) -> list[str]:
        raise NotImplementedError

    def image_path(self, split: str) -> Callable[[str], Path]:
        raise NotImplementedError

    def files(self, split: str) -> dict[str, tuple[Callable[[str], Path], TargetReader]]:
        raise NotImplementedError

    def build_dataset(self, split: str, transforms: Any = None) -> ListedFilesDataset:
        """The ``split`` dataset (``train``, ``val`` or ``test``)."""
        folder = self.splits[split]
        return ListedFilesDataset(self.split_ids(folder), self.image_path(folder),
                                  self.files(folder), transforms=transforms,
                                  source=self.source, split=folder)

    def setup(self, stage: str | None = None) -> None:
        for split in self.splits:
            if split not in self.datasets:
                transforms = (self.train_transforms() if split == "train"
                              else self.eval_transforms())
                self.datasets[split] = self.build_dataset(split, transforms)

    def _cache(self, split: str, dataset: Dataset) -> None:
        if not self.cache_samples or not isinstance(dataset, ListedFilesDataset) or (
                dataset._cache is not None):
            return super()._cache(split, dataset)
        start = time.perf_counter()
        megabytes = dataset.cache_in_memory()
        log.info("data.cache_samples: %d %s samples read in %.1f s, %.0f MB held",
                 len(dataset), split, time.perf_counter() - start, megabytes)
        return None

    def check_files(self, limit: int = 20) -> list[str]:
        """Every file of the train and val splits read once: one sentence per bad file (a
        missing file stops its split with one sentence naming the first few)."""
        found: list[str] = []
        for split in dict.fromkeys(self.splits.values()):
            try:
                found += self.build_dataset(split).problems(limit)
            except DataError as error:
                found.append(str(error))
        return found[:limit]
