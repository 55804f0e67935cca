"""Joint train/eval transforms: geometry is applied once to image, mask and boxes together.

torchvision.transforms.v2 transforms the whole sample dict: ``tv_tensors.Image``, ``Mask``
and ``BoundingBoxes`` each get the right treatment (bilinear, nearest, box arithmetic), and
``SanitizeBoundingBoxes`` drops boxes that a crop pushed out of the image, with their labels.

Only the image and the targets go through the pipeline (:class:`SampleTransform`): every v2
transform flattens and rebuilds the whole structure it is given, and the sample's ``has``
flags and ``meta`` (path, id, original size) would add leaves to every one of those passes
without ever being transformed (the saving per sample: docs/performance.md).

``image_size`` is one int (a square input) or ``[height, width]`` (a rectangle, as the
published protocols use: 288 x 384 for NYUv2, 384 x 640 for BDD100K). Two ways to reach it
(``data.resize``):

- ``stretch``: resize both sides to ``image_size``. Right for square images (Scenes) and for
  a rectangle of the images' own aspect ratio; a photo of another shape is squashed.
- ``letterbox``: resize the longest side to ``image_size`` (``v2.Resize(size=None,
  max_size=...)``; for a rectangle, the largest size that fits inside it), keeping the aspect
  ratio, then pad the bottom and right edges to the full size (black image, ignore (255)
  mask, 0 (no ground truth) depth and normals; boxes are unchanged by padding there). Chosen
  over "shortest side + crop" because nothing of the photo is cut away: every object can be
  found, and every original pixel gets a prediction. Padding only at the bottom and right
  keeps the mapping back to the original pixels a pure scale of the top-left
  ``content_size`` region.

Evaluation samples record that region in ``meta["content_size"]`` (height, width): the part of
the model input that holds the image, computed by the same torchvision resize the image went
through, so ``predict`` and the overlays map predictions back to the original pixels exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mtl_lightning.shared.constants import IGNORE_INDEX
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap

ResizeMode = Literal["stretch", "letterbox"]
RESIZE_MODES = ("stretch", "letterbox")
#: One int (a square) or (height, width).
ImageSize = int | tuple[int, int]


def size_hw(image_size: ImageSize) -> tuple[int, int]:
    """``(height, width)`` of ``image_size`` (an int is a square); one sentence otherwise."""
    if isinstance(image_size, int):
        return image_size, image_size
    values = tuple(image_size)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"data.image_size must be an int or [height, width] of positive ints, "
                         f"got {image_size!r}.")
    return values[0], values[1]


def _padding_fill(inpt: Any) -> int:
    # Depth and normal maps are masks to torchvision, but their "no ground truth" is 0.
    if isinstance(inpt, (DepthMap, NormalMap)):
        return 0
    return IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0


class PadToSquare(v2.Transform):
    """Pad the bottom and right edges to ``size`` (an int: a square; or (height, width)):
    images with 0, masks with 255 (ignore), depth and normal maps with 0 (no ground truth),
    boxes unchanged (only their canvas grows). An input already as large is left as it is."""

    def __init__(self, size: ImageSize) -> None:
        super().__init__()
        self.size = size_hw(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]) or not isinstance(
            inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)
        ):
            return inpt
        return TF.pad(inpt, params["padding"], fill=_padding_fill(inpt))


class ResizeToFit(v2.Transform):
    """Resize, keeping the aspect ratio, to the largest size that fits inside ``size``
    (height, width): the rectangular letterbox's first step (``v2.Resize(max_size=...)``
    only bounds the longest side)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size_hw(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = min(self.size[0] / height, self.size[1] / width)
        return {"size": [max(1, min(self.size[0], round(height * scale))),
                         max(1, min(self.size[1], round(width * scale)))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


def resize_steps(image_size: ImageSize, mode: ResizeMode) -> list[v2.Transform]:
    """The steps that bring any image to ``image_size`` (see the module docstring for the
    two modes)."""
    height, width = size_hw(image_size)
    if mode == "stretch":
        return [v2.Resize((height, width), antialias=True)]
    if mode == "letterbox":
        if height == width:
            return [v2.Resize(size=None, max_size=height, antialias=True), PadToSquare(height)]
        return [ResizeToFit((height, width)), PadToSquare((height, width))]
    raise ValueError(f"data.resize must be one of {list(RESIZE_MODES)}, got {mode!r}.")


def content_size(orig_size: tuple[int, int], image_size: ImageSize,
                 mode: ResizeMode) -> tuple[int, int]:
    """(height, width) of the region at the top left of the model input that holds an image
    of ``orig_size``: torchvision's own resize applied to an empty box list of that canvas."""
    frame = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                     canvas_size=tuple(orig_size))
    resized = resize_steps(image_size, mode)[0](frame)
    return tuple(int(v) for v in resized.canvas_size)


def _detection_labels(detection: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The per-box tensors that must be dropped together with their boxes: every other
    tensor of the target with one entry per box (``labels``, ``iscrowd``, ...)."""
    boxes = next(v for v in detection.values() if isinstance(v, tv_tensors.BoundingBoxes))
    return tuple(value for value in detection.values()
                 if isinstance(value, torch.Tensor) and value is not boxes
                 and value.ndim >= 1 and len(value) == len(boxes))


class SanitizeDetection(v2.Transform):
    """torchvision's ``SanitizeBoundingBoxes`` applied to each box target alone: every
    target that is a dict holding ``BoundingBoxes`` (a detection task, whatever its instance
    name), with its per-box labels.

    On a whole sample it would also index every ``tv_tensors.Mask`` by the boxes it keeps
    (it takes masks for per-object instance masks): a segmentation mask, depth map or normal
    map whose first dimension happens to equal the number of boxes would lose rows or
    channels.
    """

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__()
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=min_size,
                                                 labels_getter=_detection_labels)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        targets = sample.get("targets", {}) if isinstance(sample, dict) else {}
        boxed = {name: target for name, target in targets.items() if isinstance(target, dict)
                 and any(isinstance(v, tv_tensors.BoundingBoxes) for v in target.values())}
        if not boxed:
            return sample
        return {**sample, "targets": {**targets, **{
            name: self.sanitize(target) for name, target in boxed.items()}}}


def _finish(tasks: tuple[str, ...]) -> list[v2.Transform]:
    # Box targets are found by their type, not by task name (see SanitizeDetection).
    steps: list[v2.Transform] = [SanitizeDetection(min_size=1.0)]
    # Images leave the pipeline in [0, 1]: the model normalises them with its backbone's own
    # statistics (see mtl_lightning.models.input_normalization), saved in its checkpoints.
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return steps


class SampleTransform:
    """Apply ``pipeline`` to a sample's ``image`` and ``targets``; every other key of the
    sample is passed through untouched. With ``content`` (``(image_size, mode)`` of a
    deterministic pipeline), ``meta["content_size"]`` records where the image lies in the
    output (see :func:`content_size`)."""

    def __init__(self, pipeline: v2.Compose,
                 content: tuple[ImageSize, ResizeMode] | None = None) -> None:
        self.pipeline = pipeline
        self.content = content

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        moving = {key: sample[key] for key in ("image", "targets") if key in sample}
        result = {**sample, **self.pipeline(moving)}
        if self.content is not None and "image" in sample:
            orig = tuple(sample["image"].shape[-2:])
            result["meta"] = {**sample.get("meta", {}),
                              "content_size": content_size(orig, *self.content)}
        return result

    def __repr__(self) -> str:
        return f"SampleTransform({self.pipeline!r})"


def train_transforms(
    image_size: ImageSize,
    tasks: tuple[str, ...],
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    color_jitter: float = 0.2,
    resize: ResizeMode = "stretch",
) -> SampleTransform:
    """Resize to ``image_size`` (``resize``: see the module docstring), then flip,
    scale/translate jitter and colour jitter.

    The affine jitter fills the uncovered border with black and with 255 (ignore) in masks.
    """
    steps: list[v2.Transform] = resize_steps(image_size, resize)
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


def eval_transforms(
    image_size: ImageSize, tasks: tuple[str, ...], resize: ResizeMode = "stretch"
) -> SampleTransform:
    """Resize to ``image_size`` (``resize``: see the module docstring) and scale to [0, 1];
    no randomness. Records ``meta["content_size"]``."""
    return SampleTransform(v2.Compose([*resize_steps(image_size, resize), *_finish(tasks)]),
                           content=(image_size, resize))
