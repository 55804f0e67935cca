"""Joint train/eval transforms: geometry is applied once to image, mask and boxes together.

torchvision.transforms.v2 transforms the whole sample dict: ``tv_tensors.Image``, ``Mask``
and ``BoundingBoxes`` each get the right treatment (bilinear, nearest, box arithmetic), and
``SanitizeBoundingBoxes`` drops boxes that a crop pushed out of the image, with their labels.

Only the image and the targets go through the pipeline (:class:`SampleTransform`): every v2
transform flattens and rebuilds the whole structure it is given, and the sample's ``has``
flags and ``meta`` (path, id, original size) would add leaves to every one of those passes
without ever being transformed (measured: a training sample 3.25 -> 3.01 ms, an evaluation
sample 1.52 -> 1.43 ms; see BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IGNORE_INDEX = 255


def _detection_labels(sample: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The per-box tensors that must be dropped together with their boxes."""
    detection = sample["targets"]["detection"]
    return tuple(detection[key] for key in ("labels", "iscrowd") if key in detection)


def _finish(tasks: tuple[str, ...]) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if "detection" in tasks:
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_detection_labels))
    # Images leave the pipeline in [0, 1]: the model normalises them with its backbone's own
    # statistics (see mtl_lightning.models.input_normalization), saved in its checkpoints.
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return steps


class SampleTransform:
    """Apply ``pipeline`` to a sample's ``image`` and ``targets``; every other key of the
    sample is passed through untouched."""

    def __init__(self, pipeline: v2.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        moving = {key: sample[key] for key in ("image", "targets") if key in sample}
        return {**sample, **self.pipeline(moving)}

    def __repr__(self) -> str:
        return f"SampleTransform({self.pipeline!r})"


def train_transforms(
    image_size: int,
    tasks: tuple[str, ...],
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    color_jitter: float = 0.2,
) -> SampleTransform:
    """Resize to ``image_size``, then flip, scale/translate jitter and colour jitter.

    The affine jitter fills the uncovered border with black and with 255 (ignore) in masks.
    """
    steps: list[v2.Transform] = [v2.Resize((image_size, image_size), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if translate > 0 or scale != (1.0, 1.0):
        steps.append(v2.RandomAffine(
            degrees=0.0, translate=(translate, translate), scale=scale,
            fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX},
        ))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return SampleTransform(v2.Compose(steps + _finish(tasks)))


def eval_transforms(image_size: int, tasks: tuple[str, ...]) -> SampleTransform:
    """Resize to ``image_size`` and scale to [0, 1]; no randomness."""
    return SampleTransform(v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                                       *_finish(tasks)]))
