"""Semantic segmentation: a Panoptic-FPN-style decoder fused at the finest pyramid level.

Each pyramid level goes through a 3x3 conv and is upsampled to the finest level (stride 4
for the usual backbones); the sum is classified per pixel and the logits are upsampled to
the input size (Kirillov et al. 2019, "Panoptic Feature Pyramid Networks", semantic branch).
With ``decoder: aspp`` the head is DeepLab-v3's ASPP on the backbone's last map instead
(:mod:`mtl_lightning.tasks.dense_decoders`), as LibMTL's NYUv2 and Cityscapes protocols use.
Loss: per-pixel cross-entropy with ignore index 255. Class 0 is background. Targets arrive
as uint8 masks [B, H, W] and are widened to int64 only here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchvision import tv_tensors
from torchvision.utils import draw_segmentation_masks

from mtl_lightning.models.neck import Features
from mtl_lightning.shared.constants import IGNORE_INDEX
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.confusion_metrics import (
    SegmentationIoU,
    SegmentationPixelAccuracy,
    class_ids,
)
from mtl_lightning.tasks.dense_decoders import ASPPDecoder, DecoderKind, decoder_pyramid_levels
from mtl_lightning.tasks.drawing import dense_to_size
from mtl_lightning.tasks.wandb_media import WANDB_IGNORE, class_labels, wandb_mask

#: Colour of ignored pixels (255, void, crowd) in pictures of ground truth.
IGNORE_COLOR = (128, 128, 128)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A fixed, distinct colour per class (class 0, background, is black)."""
    generator = torch.Generator().manual_seed(1234)
    colors = torch.randint(40, 256, (num_classes, 3), generator=generator)
    colors[0] = 0
    return [tuple(int(v) for v in c) for c in colors]


class SegmentationTask(Task):
    """Per-pixel classification.

    Args:
        num_classes: classes including background (from the data module).
        class_names: their names.
        decoder_channels: width of the fused decoder map.
        dropout: dropout before the classifier.
        class_weights: optional per-class cross-entropy weights.
        decoder: ``fpn`` (the pyramid, fused at the finest level) or ``aspp`` (DeepLab-v3 on
            the backbone's last map; give the backbone ``output_stride: 8``).
        aspp_rates: the ASPP's atrous rates (``decoder: aspp``).
    """

    type_name = "segmentation"
    draw_order = 10  # masks first, under boxes and labels
    headline_metric = "miou"

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        decoder_channels: int = 64,
        dropout: float = 0.0,
        class_weights: list[float] | None = None,
        decoder: DecoderKind = "fpn",
        aspp_rates: tuple[int, ...] = (12, 24, 36),
    ) -> None:
        super().__init__(num_classes, class_names)
        if decoder not in ("fpn", "aspp"):
            raise ValueError(f"{self.name}.decoder must be 'fpn' or 'aspp', got {decoder!r}.")
        self.decoder_kind, self.aspp_rates = decoder, tuple(aspp_rates)
        self.decoder_channels = decoder_channels
        self.dropout = dropout
        weights = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        if weights is not None and len(weights) != num_classes:
            raise ValueError(
                f"segmentation.class_weights has {len(weights)} entries; give one per class "
                f"({num_classes})."
            )
        self.register_buffer("class_weights", weights, persistent=False)

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return decoder_pyramid_levels(self.decoder_kind)

    def build_head(
        self, pyramid_channels: int, backbone_channels: list[int], strides: list[int]
    ) -> None:
        if self.decoder_kind == "aspp":
            self.aspp = ASPPDecoder(backbone_channels[-1], self.num_classes, self.aspp_rates,
                                    self.decoder_channels, self.dropout)
            return
        levels = len(backbone_channels)
        self.lateral = nn.ModuleList(
            _conv_block(pyramid_channels, self.decoder_channels) for _ in range(levels)
        )
        self.classifier = nn.Sequential(
            nn.Dropout2d(self.dropout), nn.Conv2d(self.decoder_channels, self.num_classes, 1)
        )

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        if self.decoder_kind == "aspp":
            return self.aspp(features, image_size)
        finest = features.pyramid[0].shape[-2:]
        fused = self.lateral[0](features.pyramid[0])
        for block, level in zip(self.lateral[1:], features.pyramid[1:]):
            fused = fused + F.interpolate(
                block(level), size=finest, mode="bilinear", align_corners=False
            )
        logits = self.classifier(fused)
        # Upsampled in float32: the loss reads float32 anyway, and on the CPU bilinear
        # upsampling of bfloat16 is slower than of float32 (docs/performance.md).
        return F.interpolate(logits.float(), size=image_size, mode="bilinear",
                             align_corners=False)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        target = self.labelled_rows(targets, has).long()
        if not bool((target != IGNORE_INDEX).any()):
            return self.unused_loss(outputs)
        return F.cross_entropy(self.labelled_rows(outputs, has).float(), target,
                               weight=self.class_weights, ignore_index=IGNORE_INDEX)

    def postprocess(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return list(outputs.argmax(1))

    def build_metrics(self, stage: str) -> MetricCollection:
        # One confusion matrix, counted by a bincount on the device, serves both metrics
        # (tasks/confusion_metrics.py); their values are torchmetrics' MulticlassJaccardIndex
        # (macro) and MulticlassAccuracy (micro) with ignore index 255.
        return MetricCollection({
            "miou": SegmentationIoU(self.num_classes, ignore_index=IGNORE_INDEX),
            "pixel_accuracy": SegmentationPixelAccuracy(self.num_classes,
                                                        ignore_index=IGNORE_INDEX),
        })

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor,
        has: torch.Tensor,
    ) -> None:
        if not bool(has.any()):
            return  # a metric never updated in an epoch is not computed (module.py)
        # Unlabelled samples become ignored pixels instead of being indexed out (no copy of
        # the batch); with every sample labelled the targets go in as they are (the metric
        # widens them once).
        if not bool(has.all()):
            unlabelled = ~has.view(-1, *([1] * (targets.dim() - 1)))
            targets = targets.long().masked_fill(unlabelled, IGNORE_INDEX)
        metrics.update(class_ids(outputs.detach()), targets)

    @classmethod
    def placeholder_target(cls, height: int, width: int) -> tv_tensors.Mask:
        """An all-ignore (255) mask of the image's size."""
        return tv_tensors.Mask(torch.full((height, width), IGNORE_INDEX, dtype=torch.uint8))

    background_class = True

    @classmethod
    def class_lookup(cls, names: list[str], reference: list[str],
                     background: bool = False) -> torch.Tensor:
        """Over all 256 mask values: class names matched by name, value 0 kept as background
        (``background``), every other value ignored (255)."""
        index = {name: i for i, name in enumerate(reference)}
        lookup = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8)
        if background:
            lookup[0] = 0
        for value, name in enumerate(names[int(background):], start=int(background)):
            lookup[value] = index[name]
        return lookup

    @classmethod
    def remap_target(cls, target: torch.Tensor, lookup: torch.Tensor,
                     num_classes: int | None = None) -> torch.Tensor:
        return tv_tensors.wrap(lookup[target.long()], like=target)

    def target_as_prediction(self, target: torch.Tensor, crowd: bool = False) -> torch.Tensor:
        return target.long()

    def export_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class ids ``[B, S, S]``."""
        return {"labels": outputs.argmax(1)}

    def wandb_masks(self, prediction: torch.Tensor,
                    truth: torch.Tensor | None) -> dict[str, Any]:
        labels = {**class_labels(self.class_names), WANDB_IGNORE: "ignore"}
        masks = {"prediction": {"mask_data": wandb_mask(prediction, self.num_classes),
                                "class_labels": labels}}
        if truth is not None:
            masks["ground_truth"] = {"mask_data": wandb_mask(truth, self.num_classes),
                                     "class_labels": labels}
        return masks

    def resize_prediction(
        self, prediction: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
    ) -> torch.Tensor:
        return dense_to_size(prediction, from_size, to_size)

    def prediction_files(self, prediction: torch.Tensor) -> dict[str, np.ndarray]:
        """The class index of each pixel at the image's original size, as a PNG."""
        return {"mask.png": prediction.to(torch.uint8).cpu().numpy()}

    def prediction_to_json(self, prediction: torch.Tensor) -> Any:
        """Pixel counts per class present; the mask PNG holds the class indices listed here.
        Pixels that are no class (ignore 255, void, crowd: only in ground truth) are counted
        under ``"ignore"`` with ``class_id`` null."""
        values = prediction.flatten().long()
        known = (values >= 0) & (values < self.num_classes)
        counts = torch.bincount(values[known], minlength=self.num_classes)
        entries: list[dict[str, Any]] = [
            {"class_id": i, "category_id": self.category_ids[i], "name": self.class_names[i],
             "pixels": int(c)}
            for i, c in enumerate(counts.tolist()) if c > 0
        ]
        ignored = int((~known).sum())
        if ignored:
            entries.append({"class_id": None, "category_id": None, "name": "ignore",
                            "pixels": ignored})
        return entries

    def draw(self, image: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """Classes other than background in their colours; pixels that are no class (ignore,
        void, crowd) in grey."""
        prediction = prediction.cpu().long()
        masks = prediction[None] == torch.arange(1, self.num_classes)[:, None, None]
        colors = class_colors(self.num_classes)[1:]
        ignored = (prediction < 0) | (prediction >= self.num_classes)
        if bool(ignored.any()):
            masks = torch.cat([masks, ignored[None]])
            colors = [*colors, IGNORE_COLOR]
        if len(masks) == 0:
            return image
        return draw_segmentation_masks(image, masks, alpha=0.45, colors=colors)
