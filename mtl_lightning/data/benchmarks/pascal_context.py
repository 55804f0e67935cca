"""PASCAL-Context in the five-task layout of ASTMT (Maninis, Radosavovic & Kokkinos 2019,
"Attentive Single-Tasking of Multiple Tasks"), which MTI-Net, ATRC and InvPT train on::

    <root>/JPEGImages/<id>.jpg                  the RGB image
    <root>/ImageSets/Context/{train,val}.txt    sample ids, 4998 train / 5105 val
    <root>/semseg/VOC12/<id>.png                21 classes (VOC's 20 + background), 255
      (or semseg/pascal-context/<id>.png)       = ignore                              (semseg)
    <root>/human_parts/<id>.mat                 PASCAL-Part annotations: anno.objects[]
                                                {class_ind, mask, parts[]{part_name, mask}}
    <root>/sal_distill/<id>.png                 distilled saliency, thresholded at 0.5
    <root>/normals_distill/<id>.png             distilled normals, 2 * v / 255 - 1
    <root>/pascal-context/trainval/<id>.mat     PASCAL-Context's LabelMap (459 labels)

Tasks (instance names; see INTERFACE.md's named task instances):

- ``semseg`` (segmentation): the 21 classes.
- ``human_parts`` (segmentation): the 6 parts of ASTMT's coarse person model (head, torso,
  upper / lower arms and legs) + background, from every person object that has parts; an
  image without such a person is unlabelled for the task (``has`` false; ASTMT evaluates
  human parts on those images only).
- ``saliency`` (segmentation, 2 classes): the distilled saliency above 0.5.
- ``normals``: the distilled normals, kept only on pixels whose PASCAL-Context label is a
  class NYUD-v2 also has (the distillation's source; ASTMT's rule) and zero elsewhere.
- ``edges``: the boundaries of the LabelMap: a pixel whose right or lower neighbour has
  another label (one pixel wide; ASTMT thins the Laplacian's support, which is close to it).

``.mat`` files are read with ``scipy.io.loadmat``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from mtl_lightning.data.benchmarks.listed_files import (
    FileIn,
    ListedFilesDataModule,
    TargetReader,
    check_size,
    class_mask,
    read_png,
    read_split_ids,
)
from mtl_lightning.data.benchmarks.nyud import read_png_normals
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.shared.dense_maps import NormalMap
from mtl_lightning.shared.errors import DataError

#: PASCAL VOC's 20 categories and background, the ``semseg`` classes.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
#: ASTMT's six coarse human parts (and background), the ``human_parts`` classes.
HUMAN_PART_CLASSES = ("background", "head", "torso", "upper arm", "lower arm", "upper leg",
                      "lower leg")
#: PASCAL-Part part name -> coarse part id (ASTMT's six-part grouping).
HUMAN_PART_IDS = {
    **dict.fromkeys(("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye",
                     "mouth", "nose"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
PERSON_CLASS = 15  # PASCAL VOC's person
SALIENCY_CLASSES = ("background", "salient")
#: PASCAL-Context labels (LabelMap values) whose class name NYUD-v2 also has, plus tvmonitor:
#: where the distilled normals are kept (the names shared by ASTMT's context_classes.json and
#: nyu_classes.json).
NORMALS_VALID_LABELS = (
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46,
    49, 50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95,
    96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157,
    158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219,
    220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261,
    263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304,
    307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355,
    357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413,
    414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457)


def load_mat(path: Path) -> Any:
    """A ``.mat`` file's variables (structs as attribute objects); one sentence otherwise."""
    from scipy.io import loadmat  # only the PASCAL-Context reader needs scipy
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as error:
        raise DataError(f"Cannot read '{path}' as a .mat file ({error}); replace it.") from None


def read_label_map(path: Path, size: tuple[int, int]) -> np.ndarray:
    """PASCAL-Context's ``LabelMap`` of a ``pascal-context/trainval/<id>.mat`` file."""
    content = load_mat(path)
    if "LabelMap" not in content:
        raise DataError(f"'{path}' has no LabelMap variable; is it a PASCAL-Context "
                        "trainval annotation?")
    labels = np.asarray(content["LabelMap"])
    if labels.ndim != 2:
        raise DataError(f"'{path}' LabelMap has shape {labels.shape}; it must be H x W.")
    return check_size(labels.astype(np.int64), path, size)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """1 where the right or lower neighbour has another label, else 0 (uint8)."""
    edges = np.zeros(labels.shape, dtype=np.uint8)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def read_semseg(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    labels = check_size(read_png(path), path, size).astype(np.int64)
    return class_mask(labels, path, len(VOC_CLASSES)), True


def read_saliency(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    """Distilled saliency in [0, 255]: salient (1) above 0.5, else 0."""
    saliency = check_size(read_png(path), path, size).astype(np.float32) / 255.0
    return tv_tensors.Mask(torch.from_numpy((saliency > 0.5).astype(np.uint8))), True


def read_label_map_edges(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    return tv_tensors.Mask(torch.from_numpy(label_boundaries(read_label_map(path, size)))), True


def _items(value: Any) -> list[Any]:
    """A MATLAB struct array as a list (loadmat squeezes one element to the element)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def read_human_parts(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    """The coarse part ids of every person with parts; unlabelled without such a person."""
    content = load_mat(path)
    anno = content.get("anno")
    if anno is None or not hasattr(anno, "objects"):
        raise DataError(f"'{path}' has no anno.objects; is it a PASCAL-Part annotation?")
    target = np.zeros(size, dtype=np.uint8)
    labelled = False
    for obj in _items(anno.objects):
        parts = _items(getattr(obj, "parts", None))
        if int(np.asarray(obj.class_ind)) != PERSON_CLASS or not parts:
            continue
        labelled = True
        for part in parts:
            name = str(part.part_name)
            if name not in HUMAN_PART_IDS:
                raise DataError(f"'{path}' has a person part named '{name}', which is none "
                                f"of PASCAL-Part's: {sorted(HUMAN_PART_IDS)}.")
            mask = check_size(np.asarray(part.mask), path, size).astype(bool)
            target[mask] = HUMAN_PART_IDS[name]
    if not labelled:
        target[:] = IGNORE_INDEX
    return tv_tensors.Mask(torch.from_numpy(target)), labelled


class MaskedNormals:
    """Distilled normals kept where the LabelMap's label is one of ``valid`` (all labels:
    ``valid`` None); a picklable reader (loader workers may be spawned)."""

    def __init__(self, label_maps: FileIn, sample_id_of: Callable[[Path], str],
                 valid: tuple[int, ...] | None) -> None:
        self.label_maps, self.sample_id_of = label_maps, sample_id_of
        self.valid = None if valid is None else np.asarray(valid)

    def __call__(self, path: Path, size: tuple[int, int]) -> tuple[NormalMap, bool]:
        normals, _ = read_png_normals(path, size)
        if self.valid is not None:
            labels = read_label_map(self.label_maps(self.sample_id_of(path)), size)
            keep = torch.from_numpy(np.isin(labels, self.valid))
            normals = NormalMap(torch.where(keep, normals.as_subclass(torch.Tensor),
                                            torch.zeros(())))
        return normals, True


def _stem(path: Path) -> str:
    return path.stem


class SemsegPath:
    """id -> ``semseg/VOC12/<id>.png`` if it exists, else ``semseg/pascal-context/<id>.png``."""

    def __init__(self, root: Path) -> None:
        self.voc = FileIn(root / "semseg" / "VOC12", (".png",))
        self.context = FileIn(root / "semseg" / "pascal-context", (".png",))

    def __call__(self, sample_id: str) -> Path:
        voc = self.voc(sample_id)
        return voc if voc.is_file() else self.context(sample_id)


class PascalContextDataModule(ListedFilesDataModule):
    """PASCAL-Context in ASTMT's five-task layout.

    Args:
        root: the folder holding ``JPEGImages/``, ``ImageSets/``, ``semseg/``,
            ``human_parts/``, ``sal_distill/``, ``normals_distill/`` and ``pascal-context/``.
        tasks: any of ``semseg``, ``human_parts``, ``saliency``, ``normals``, ``edges``
            (null: all five).
        normals_valid_labels: PASCAL-Context labels where the distilled normals count
            (default: the classes NYUD-v2 also has, as ASTMT); null: every pixel.
        image_size: int or ``[height, width]``; the protocols letterbox into 512 x 512.
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    source = "pascal_context"
    default_tasks = ("semseg", "human_parts", "saliency", "normals", "edges")

    def __init__(self, root: str = "data/PASCAL_MT", tasks: tuple[str, ...] | None = None,
                 normals_valid_labels: tuple[int, ...] | None = NORMALS_VALID_LABELS,
                 image_size: int | tuple[int, int] = 512, **kwargs: Any) -> None:
        kwargs.setdefault("resize", "letterbox")
        super().__init__(root, tasks, image_size=image_size, **kwargs)
        self.normals_valid_labels = (None if normals_valid_labels is None
                                     else tuple(normals_valid_labels))

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        def segmentation(names: tuple[str, ...]) -> dict[str, Any]:
            return {"type": "segmentation", "num_classes": len(names), "class_names": list(names)}

        info: dict[str, dict[str, Any]] = {
            "semseg": segmentation(VOC_CLASSES),
            "human_parts": segmentation(HUMAN_PART_CLASSES),
            "saliency": segmentation(SALIENCY_CLASSES),
            "normals": {},
            "edges": {"own_labels": True},  # boundaries of the data's own label maps
        }
        return {task: info[task] for task in self.tasks}

    def split_ids(self, split: str) -> list[str]:
        return read_split_ids(self.root / "ImageSets" / "Context" / f"{split}.txt")

    def image_path(self, split: str) -> Callable[[str], Path]:
        return FileIn(self.root / "JPEGImages", (".jpg",))

    def files(self, split: str) -> dict[str, tuple[Callable[[str], Path], TargetReader]]:
        label_maps = FileIn(self.root / "pascal-context" / "trainval", (".mat",))
        layout: dict[str, tuple[Callable[[str], Path], TargetReader]] = {
            "semseg": (SemsegPath(self.root), read_semseg),
            "human_parts": (FileIn(self.root / "human_parts", (".mat",)), read_human_parts),
            "saliency": (FileIn(self.root / "sal_distill", (".png",)), read_saliency),
            "normals": (FileIn(self.root / "normals_distill", (".png",)),
                        MaskedNormals(label_maps, _stem, self.normals_valid_labels)),
            "edges": (label_maps, read_label_map_edges),
        }
        return {task: layout[task] for task in self.tasks}
