"""Batched training augmentation: the random flip, scale/translate jitter and colour jitter of
:func:`~mtl_lightning.data.transforms.train_transforms`, applied to a whole collated batch
after it reaches the training device (``data.batch_augmentation``).

Why: with the per-sample path every training sample goes through torchvision's v2 pipeline
in a loader worker, which on a machine with few cores competes with the training step for
the same cores (docs/performance.md). Here the worker only resizes and scales each sample to
[0, 1] (:func:`worker_transforms`); the data module's ``on_after_batch_transfer`` hook then
augments the batch with a handful of tensor operations over all its images at once, on the
device the step runs on.

Every random parameter stays per sample, drawn from the same distributions as the
per-sample path (``v2.RandomHorizontalFlip``, ``v2.RandomAffine(degrees=0, translate,
scale)``, ``v2.ColorJitter(b, c, s)``):

- flip: each image with probability ``hflip``, chosen by ``torch.where``; boxes flipped by
  torchvision's own kernel, surface normals' x component negated with their image.
- scale/translate: one affine matrix per image (``torch.nn.functional.affine_grid`` and
  ``grid_sample``: bilinear for images, nearest for masks, depth and normals); uncovered
  borders are 0 in images, depth and normals and 255 (ignore) in segmentation masks, as in
  the per-sample path. Boxes are mapped by the same scale and shift.
- colour jitter: per-image brightness, contrast and saturation factors, in a per-image random
  order (torchvision's formulas: a blend with black, with the image's mean grey and with
  its greyscale).
- finally the boxes are clipped to the image and those narrower or lower than 1 pixel are
  dropped with their labels (``torchvision.ops.clip_boxes_to_image`` and
  ``remove_small_boxes``: what ``SanitizeBoundingBoxes`` does in the per-sample path).

The random numbers come from torch's global (CPU) generator, so ``seed_everything`` makes a
run repeatable; only the per-image parameters are moved to the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.ops import clip_boxes_to_image, remove_small_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mtl_lightning.data.collate import TargetList
from mtl_lightning.data.transforms import (
    IGNORE_INDEX,
    ImageSize,
    ResizeMode,
    SampleTransform,
    resize_steps,
)

#: Task types whose dense target's "no ground truth" (and uncovered border) is 0, not 255.
ZERO_FILL_TYPES = ("depth", "normals")


def worker_transforms(image_size: ImageSize, resize: ResizeMode = "stretch") -> SampleTransform:
    """The per-sample part of the batched path, run in the loader worker: resize to
    ``image_size`` and scale the image to [0, 1]. No randomness; boxes are sanitised on the
    batch, after the augmentation."""
    steps = [*resize_steps(image_size, resize), v2.ToDtype(torch.float32, scale=True)]
    return SampleTransform(v2.Compose(steps))


def _per_sample(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``flags`` ([B]) shaped to broadcast over ``like`` ([B, ...])."""
    return flags.view(-1, *([1] * (like.ndim - 1)))


def _uniform(low: float, high: float, size: int) -> torch.Tensor:
    return torch.empty(size).uniform_(low, high)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # torchvision's blend for float images: ratio * image + (1 - ratio) * other, in [0, 1].
    return (ratio * image + (1.0 - ratio) * other).clamp(0.0, 1.0)


class BatchAugmentation:
    """Augment a collated batch (``{"image", "targets", "has", "meta"}``) with per-image
    random parameters; see the module docstring.

    Args:
        hflip: horizontal-flip probability.
        scale: random scale range (``(1, 1)`` with ``translate`` 0: no affine jitter).
        translate: random translation, a fraction of the image's width and height.
        color_jitter: brightness/contrast/saturation jitter strength (0: none).
        task_types: task instance name -> task type (``segmentation``, ``detection``,
            ``depth``, ``normals``, ...); a name not listed is its own type.
    """

    def __init__(self, hflip: float = 0.5, scale: tuple[float, float] = (0.8, 1.2),
                 translate: float = 0.1, color_jitter: float = 0.2,
                 task_types: Mapping[str, str] | None = None) -> None:
        self.hflip = hflip
        self.scale = (float(scale[0]), float(scale[1]))
        self.translate = translate
        self.color_jitter = color_jitter
        self.task_types = dict(task_types or {})

    def __repr__(self) -> str:
        return (f"BatchAugmentation(hflip={self.hflip}, scale={self.scale}, "
                f"translate={self.translate}, color_jitter={self.color_jitter})")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = batch["image"]
        size, height, width = len(image), image.shape[-2], image.shape[-1]
        dense = {task: value for task, value in batch.get("targets", {}).items()
                 if isinstance(value, torch.Tensor) and value.ndim >= 3
                 and value.shape[0] == size and tuple(value.shape[-2:]) == (height, width)}
        boxed = {task: value for task, value in batch.get("targets", {}).items()
                 if isinstance(value, list) and len(value) == size
                 and all(isinstance(t, dict) and "boxes" in t for t in value)}
        boxes = {task: _Boxes(value, image.device) for task, value in boxed.items()}

        if self.hflip > 0:
            flip = (torch.rand(size) < self.hflip).to(image.device)
            image = torch.where(_per_sample(flip, image), image.flip(-1), image)
            dense = {task: self._flip_dense(task, value, flip) for task, value in dense.items()}
            for part in boxes.values():
                part.flip(flip, (height, width))
        if self.translate > 0 or self.scale != (1.0, 1.0):
            scale = _uniform(*self.scale, size)
            shift = torch.stack([
                torch.round(_uniform(-self.translate * width, self.translate * width, size)),
                torch.round(_uniform(-self.translate * height, self.translate * height, size)),
            ], dim=1)
            grid = self._grid(scale, shift, (height, width), image)
            image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)
            if dense:  # which output pixels the input covers: one mask for every target
                ones = torch.ones(size, 1, height, width, dtype=grid.dtype, device=grid.device)
                covered = F.grid_sample(ones, grid, mode="nearest", padding_mode="zeros",
                                        align_corners=False) > 0.5
                dense = {task: self._warp_dense(task, value, grid, covered)
                         for task, value in dense.items()}
            for part in boxes.values():
                part.scale_shift(scale, shift, (height, width))
        if self.color_jitter > 0:
            image = self._jitter(image)

        targets = {**batch.get("targets", {}), **dense}
        targets.update({task: part.sanitized((height, width)) for task, part in boxes.items()})
        return {**batch, "image": image, "targets": targets}

    def _fill(self, task: str) -> int:
        return 0 if self.task_types.get(task, task) in ZERO_FILL_TYPES else IGNORE_INDEX

    def _flip_dense(self, task: str, value: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        flipped = value.flip(-1)
        if self.task_types.get(task, task) == "normals":  # a mirror turns the x component
            flipped = flipped.clone()
            flipped[:, 0] = -flipped[:, 0]
        return torch.where(_per_sample(flip, value), flipped, value)

    @staticmethod
    def _grid(scale: torch.Tensor, shift: torch.Tensor, hw: tuple[int, int],
              image: torch.Tensor) -> torch.Tensor:
        """The sampling grid of ``x' = s (x - c) + c + t`` about the image centre ``c``: the
        output at ``x'`` reads the input at ``(x' - c - t) / s + c``, in the normalised
        coordinates of ``grid_sample`` (-1 and 1 are the outer pixel edges)."""
        height, width = hw
        theta = torch.zeros(len(scale), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, 0, 2] = -2.0 * shift[:, 0] / (scale * width)
        theta[:, 1, 2] = -2.0 * shift[:, 1] / (scale * height)
        theta = theta.to(device=image.device, dtype=image.dtype)
        return F.affine_grid(theta, [len(scale), 1, height, width], align_corners=False)

    def _warp_dense(self, task: str, value: torch.Tensor, grid: torch.Tensor,
                    covered: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour warp; where ``covered`` is False (the uncovered border) the
        target gets its task's fill value."""
        spatial = value.unsqueeze(1) if value.ndim == 3 else value  # [B, H, W] masks
        warped = F.grid_sample(spatial.to(grid.dtype), grid, mode="nearest",
                               padding_mode="zeros", align_corners=False)
        warped = warped.masked_fill(~covered, float(self._fill(task))).to(value.dtype)
        return warped.squeeze(1) if value.ndim == 3 else warped

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation, each image its own factors and order.

        Each of the three operations blends the image with something: black (brightness),
        its mean grey (contrast) or its greyscale (saturation). So each stage is one blend
        per image, with the partner and factor of the operation that image draws there."""
        size, strength = len(image), self.color_jitter
        factors = _uniform(max(0.0, 1.0 - strength), 1.0 + strength, 3 * size).view(3, size)
        order = torch.argsort(torch.rand(size, 3), dim=1)  # a permutation per image
        factors = factors.gather(0, order.T).T  # the factor of each image's k-th operation
        factors = factors.to(device=image.device, dtype=image.dtype).view(size, 3, 1, 1, 1)
        order = order.to(image.device).view(size, 3, 1, 1, 1)
        for stage in range(3):
            op = order[:, stage]
            grey = TF.rgb_to_grayscale(image)
            partner = torch.where(op == 2, grey, grey.mean(dim=(-3, -2, -1), keepdim=True))
            partner = partner.masked_fill(op == 0, 0.0)
            image = _blend(image, partner, factors[:, stage])
        return image


class _Boxes:
    """One detection target of a batch as one ``[N, 4]`` XYXY tensor plus each box's image,
    so the per-image transforms are one tensor operation; :meth:`sanitized` splits it back."""

    def __init__(self, targets: list[dict[str, Any]], device: torch.device) -> None:
        self.keys = list(targets[0])
        self.count = len(targets)
        lengths = [len(t["boxes"]) for t in targets]
        self.owner = torch.repeat_interleave(torch.arange(self.count),
                                             torch.tensor(lengths, dtype=torch.long)).to(device)
        self.boxes = torch.cat([t["boxes"].to(device) for t in targets]).float()
        # Every other per-box tensor (labels, iscrowd, ...) travels with its box.
        self.per_box = {key: torch.cat([t[key] for t in targets]) for key in self.keys
                        if key != "boxes" and all(isinstance(t[key], torch.Tensor)
                                                  and t[key].ndim >= 1
                                                  and len(t[key]) == len(t["boxes"])
                                                  for t in targets)}
        self.other = [{key: t[key] for key in self.keys
                       if key != "boxes" and key not in self.per_box} for t in targets]
        self.dtype = targets[0]["boxes"].dtype

    def flip(self, flip: torch.Tensor, hw: tuple[int, int]) -> None:
        flipped = TF.horizontal_flip_bounding_boxes(
            self.boxes, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=hw)
        self.boxes = torch.where(flip[self.owner].unsqueeze(1), flipped, self.boxes)

    def scale_shift(self, scale: torch.Tensor, shift: torch.Tensor,
                    hw: tuple[int, int]) -> None:
        height, width = hw
        centre = torch.tensor([width, height, width, height], dtype=self.boxes.dtype,
                              device=self.boxes.device) / 2
        s = scale.to(self.boxes)[self.owner].unsqueeze(1)
        t = shift.to(self.boxes)[self.owner].repeat(1, 2)
        self.boxes = s * (self.boxes - centre) + centre + t

    def sanitized(self, hw: tuple[int, int]) -> TargetList:
        boxes = clip_boxes_to_image(self.boxes, hw)
        keep = remove_small_boxes(boxes, min_size=1.0)
        owner = self.owner[keep]
        sizes = torch.bincount(owner, minlength=self.count).tolist()
        columns = {"boxes": boxes[keep].to(self.dtype),
                   **{key: value[keep.to(value.device)] for key, value in self.per_box.items()}}
        parts = {key: value.split(sizes) for key, value in columns.items()}
        return TargetList(
            {key: parts[key][i] if key in parts else self.other[i][key] for key in self.keys}
            for i in range(self.count))


def batch_augmentation(augment: Mapping[str, Any],
                       task_info: Mapping[str, Mapping[str, Any]]) -> BatchAugmentation:
    """The batch augmentation of a data module's ``augment`` options (``hflip``, ``scale``,
    ``translate``, ``color_jitter``) for its tasks (``task_info``: name -> ``{"type", ...}``)."""
    types = {name: str(info.get("type", name)) for name, info in task_info.items()}
    return BatchAugmentation(task_types=types, **augment)


__all__ = ["BatchAugmentation", "batch_augmentation", "worker_transforms"]
