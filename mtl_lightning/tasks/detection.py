"""Anchor-free object detection: a centre heatmap with box regression at the finest level.

Why CenterNet-style at stride 4 rather than FCOS over pyramid levels: the stride-4 map is
already the one the segmentation decoder works on, small objects (8 px) still cover two
cells, there is no per-level assignment rule to tune, and the targets of a whole batch are
built with a handful of dense tensor operations (no loop over objects or images).

Head (Zhou et al. 2019, "Objects as Points"; boxes regressed from the Gaussian area as in
TTFNet, Liu et al. 2020): for each cell, one heatmap logit per class and four box numbers
``(dx, dy, log w, log h)``, in units of the stride, relative to the cell centre.

Targets: each object puts an elliptical Gaussian (sigma = ``gaussian_alpha`` * size / 6, per
axis) at the cell holding its centre; the class heatmap is the maximum over its objects.
Every cell whose Gaussian weight is at least ``min_box_weight`` regresses the box of the
object with the largest weight there.

Losses: the penalty-reduced focal loss of CenterNet on the heatmap (torchvision's
``sigmoid_focal_loss`` has no Gaussian penalty reduction, so it is written here, eq. 1 of
the paper) and torchvision's generalized IoU loss (Rezatofighi et al. 2019) on the decoded
boxes, weighted by the Gaussian.

Decoding: 3x3 max-pool peaks, top-k, score threshold, class-wise ``batched_nms`` over the
whole batch at once, and a cap on detections per image; all configurable.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors
from torchvision.ops import batched_nms, clip_boxes_to_image, generalized_box_iou_loss
from torchvision.utils import draw_bounding_boxes

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.drawing import non_overlapping_labels
from mtl_lightning.tasks.segmentation import IGNORE_COLOR, class_colors
from mtl_lightning.tasks.wandb_media import box_data, class_labels

#: Scalar entries of torchmetrics' MeanAveragePrecision that are logged (it also returns
#: per-class tensors and the class list, which are not scalars).
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")

Targets = list[dict[str, torch.Tensor]]


def pad_targets(targets: Targets, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Stack a batch's boxes [N_i, 4] and labels [N_i] into [B, M, 4], [B, M] and a mask of
    the training targets: ``iscrowd`` regions are evaluation-only, so they are not valid.

    One scatter per tensor for the whole batch (not three copies per image): on a GPU each
    copy is a kernel launch, and launches, not arithmetic, bound the default model's step.
    """
    batch = len(targets)
    counts = [len(t["labels"]) for t in targets]  # shapes: known on the host, no sync
    slots = max(max(counts, default=0), 1)
    boxes = torch.zeros(batch, slots, 4, device=device)
    labels = torch.zeros(batch, slots, dtype=torch.long, device=device)
    valid = torch.zeros(batch, slots, dtype=torch.bool, device=device)
    if sum(counts) == 0:
        return boxes, labels, valid
    image = torch.repeat_interleave(torch.arange(batch), torch.tensor(counts)).to(device)
    slot = torch.cat([torch.arange(count) for count in counts]).to(device)
    boxes[image, slot] = torch.cat([t["boxes"] for t in targets]).to(device, torch.float)
    labels[image, slot] = torch.cat([t["labels"] for t in targets]).to(device)
    crowd = [t.get("iscrowd") for t in targets]
    if any(c is not None for c in crowd):
        valid[image, slot] = ~torch.cat([
            c.to(device, torch.bool) if c is not None
            else torch.zeros(count, dtype=torch.bool, device=device)
            for c, count in zip(crowd, counts)
        ])
    else:
        valid[image, slot] = True
    return boxes, labels, valid


class DetectionTask(Task):
    """Detect objects as points with boxes.

    Args:
        num_classes: object classes, background excluded (from the data module).
        class_names: their names.
        head_channels: width of the head's shared convolutions.
        gaussian_alpha: size of the target Gaussian relative to the box (TTFNet's 0.54).
        min_box_weight: cells with a smaller Gaussian weight regress no box.
        box_loss_weight: weight of the GIoU loss against the heatmap loss.
        score_threshold: detections below this score are dropped.
        nms_iou: IoU above which class-wise NMS removes the lower-scored box.
        pre_nms_topk: peaks kept per image before NMS.
        max_detections: detections kept per image after NMS.
    """

    type_name = "detection"
    metrics_on_train = False  # COCO mAP on every training batch costs more than the step
    draw_order = 20  # boxes over masks, under image labels
    headline_metric = "map_50"

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        head_channels: int = 64,
        gaussian_alpha: float = 0.54,
        min_box_weight: float = 0.05,
        box_loss_weight: float = 2.0,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        pre_nms_topk: int = 100,
        max_detections: int = 100,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.head_channels = head_channels
        self.gaussian_alpha = gaussian_alpha
        self.min_box_weight = min_box_weight
        self.box_loss_weight = box_loss_weight
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.pre_nms_topk = pre_nms_topk
        self.max_detections = max_detections
        self.stride = 4  # set from the neck by build_head

    # ------------------------------------------------------------------ head
    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return (0,)  # the stride-4 level only

    def build_head(
        self, pyramid_channels: int, backbone_channels: list[int], strides: list[int]
    ) -> None:
        self.stride = strides[0]

        def branch(out_channels: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(pyramid_channels, self.head_channels, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.head_channels, out_channels, 1),
            )

        self.heatmap_head = branch(self.num_classes)
        self.box_head = branch(4)
        prior = 0.01  # focal-loss prior (Lin et al. 2017): start with few positives
        nn.init.constant_(self.heatmap_head[-1].bias, -math.log((1 - prior) / prior))
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)

    def forward(self, features: Features, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        level = features.pyramid[0]
        return {"heatmap": self.heatmap_head(level), "box": self.box_head(level)}

    # --------------------------------------------------------------- targets
    def _cell_centres(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Centre of every cell in input pixels, [H*W, 2] as (x, y)."""
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * self.stride

    def encode(
        self, targets: Targets, height: int, width: int, device: torch.device,
        box_params: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Dense targets for a batch: heatmap [B,C,H,W], box [B,4,H,W], weight [B,H,W].

        ``box_params=False`` leaves out ``box`` (each cell's box as the head's parameters):
        the loss compares decoded boxes with ``boxes_xyxy`` (GIoU) and never reads it.

        Vectorised over images and objects: the Gaussians of all objects of all images are
        one [B, M, H*W] tensor (the outer product of their x and y factors), reduced with
        ``amax`` (per class) and ``max`` (per cell).
        """
        boxes, labels, valid = pad_targets(targets, device)
        batch = labels.shape[0]
        stride = self.stride
        sizes = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-3)  # [B,M,2] (w,h) pixels
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        centre_cells = (centres / stride).floor().clamp(min=0)
        centre_cells[..., 0].clamp_(max=width - 1)
        centre_cells[..., 1].clamp_(max=height - 1)
        sigma = (self.gaussian_alpha * sizes / stride / 6).clamp(min=0.25)  # cells
        # The Gaussian is separable: exp over the [B,M,W] and [B,M,H] axes, then one outer
        # product, instead of exp over every cell of every object (W + H exps, not W * H).
        xs = torch.arange(width, device=device, dtype=sigma.dtype)
        ys = torch.arange(height, device=device, dtype=sigma.dtype)
        gauss_x = torch.exp(-0.5 * ((xs - centre_cells[..., :1]) / sigma[..., :1]) ** 2)
        gauss_y = torch.exp(-0.5 * ((ys - centre_cells[..., 1:]) / sigma[..., 1:]) ** 2)
        gauss = (gauss_y[..., :, None] * gauss_x[..., None, :]).flatten(2)  # [B,M,HW]
        gauss = gauss * valid[..., None]

        heatmap = torch.zeros(batch, self.num_classes, height * width, device=device)
        heatmap.scatter_reduce_(
            1, labels[..., None].expand(-1, -1, height * width), gauss, reduce="amax"
        )
        weight, owner = gauss.max(1)  # [B,HW]
        owner_boxes = torch.gather(boxes, 1, owner[..., None].expand(-1, -1, 4))  # [B,HW,4]
        weight = torch.where(weight >= self.min_box_weight, weight, torch.zeros_like(weight))
        encoded = {
            "heatmap": heatmap.view(batch, self.num_classes, height, width),
            "boxes_xyxy": owner_boxes,
            "weight": weight.view(batch, height, width),
            "num_objects": valid.sum(1),
        }
        if box_params:
            box_target = self._box_to_params(owner_boxes, height, width)
            encoded["box"] = box_target.permute(0, 2, 1).reshape(batch, 4, height, width)
        return encoded

    def _box_to_params(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """xyxy boxes [B, HW, 4] (one per cell) -> (dx, dy, log w, log h) in stride units."""
        cells = self._cell_centres(height, width, boxes.device)
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        sizes = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-3)
        return torch.cat([(centres - cells) / self.stride, (sizes / self.stride).log()], -1)

    def decode_boxes(self, box: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """Box parameters [B, 4, H, W] -> xyxy boxes [B, H*W, 4] in input pixels; with
        ``cells`` ([B, k] flat cell indices) only those cells' boxes, [B, k, 4] (decoding
        the top-k peaks instead of every cell and then picking k)."""
        height, width = box.shape[-2:]
        params = box.float().flatten(2).transpose(1, 2)  # [B,HW,4]
        centres = self._cell_centres(height, width, box.device)  # [HW,2]
        if cells is not None:
            params = torch.gather(params, 1, cells[..., None].expand(-1, -1, 4))
            centres = centres[cells]
        return self._decode(params, centres)

    def _decode(self, params: torch.Tensor, cell_centres: torch.Tensor) -> torch.Tensor:
        """(dx, dy, log w, log h) in stride units at cells centred on ``cell_centres`` ->
        xyxy boxes in input pixels (any leading shape)."""
        centres = cell_centres + params[..., :2] * self.stride
        sizes = params[..., 2:].clamp(max=10.0).exp() * self.stride
        return torch.cat([centres - sizes / 2, centres + sizes / 2], -1)

    # ------------------------------------------------------------------ loss
    def loss(
        self, outputs: dict[str, torch.Tensor], targets: Targets, has: torch.Tensor
    ) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        keep = has.nonzero().flatten()
        heat_logits = self.labelled_rows(outputs["heatmap"], has).float()
        box = self.labelled_rows(outputs["box"], has).float()
        labelled = [targets[i] for i in keep.tolist()]  # one host sync, not one per image
        height, width = heat_logits.shape[-2:]
        encoded = self.encode(labelled, height, width, heat_logits.device, box_params=False)
        num_objects = encoded["num_objects"].sum().clamp(min=1)
        heat_loss = penalty_reduced_focal_loss(heat_logits, encoded["heatmap"]) / num_objects

        weight = encoded["weight"].flatten()
        positive = weight > 0
        if not bool(positive.any()):
            return heat_loss + box.sum() * 0.0
        # Only the positive cells' boxes are decoded (a few per object, not every cell).
        cells = positive.nonzero().flatten()
        params = box.flatten(2).transpose(1, 2).reshape(-1, 4)[cells]
        predicted = self._decode(params, self._cell_centres(height, width, box.device)[
            cells % (height * width)])
        target = encoded["boxes_xyxy"].reshape(-1, 4)[positive]
        giou = generalized_box_iou_loss(predicted, target, reduction="none")
        box_loss = (giou * weight[positive]).sum() / weight[positive].sum()
        return heat_loss + self.box_loss_weight * box_loss

    # ------------------------------------------------------------ decoding
    def postprocess(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        heat = outputs["heatmap"].float().sigmoid()
        batch, classes, height, width = heat.shape
        peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
        k = min(self.pre_nms_topk, classes * height * width)
        scores, index = peaks.flatten(1).topk(k)  # [B,k]
        labels = index // (height * width)
        cells = index % (height * width)
        boxes = self.decode_boxes(outputs["box"], cells)
        images = torch.arange(batch, device=heat.device)[:, None].expand(-1, k)
        keep = scores.flatten() > self.score_threshold
        flat_boxes, flat_scores = boxes.reshape(-1, 4)[keep], scores.flatten()[keep]
        flat_labels, flat_images = labels.flatten()[keep], images.flatten()[keep]
        groups = flat_images * classes + flat_labels  # NMS per image and class, in one call
        kept = batched_nms(flat_boxes, flat_scores, groups, self.nms_iou)
        # Group the survivors by image (a stable sort keeps NMS's descending scores within
        # an image), keep each image's best ``max_detections``, and split once: one host
        # sync for the whole batch instead of a boolean mask and a sync per image.
        kept = kept[torch.sort(flat_images[kept], stable=True).indices]
        owners = flat_images[kept]
        counts = torch.bincount(owners, minlength=batch)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(kept), device=kept.device) - first[owners]
        kept = kept[rank < self.max_detections]
        sizes = counts.clamp(max=self.max_detections).tolist()
        return [
            {"boxes": boxes_i, "scores": scores_i, "labels": labels_i}
            for boxes_i, scores_i, labels_i in zip(
                flat_boxes[kept].split(sizes), flat_scores[kept].split(sizes),
                flat_labels[kept].split(sizes),
            )
        ]

    # -------------------------------------------------------------- metrics
    def build_metrics(self, stage: str) -> MetricCollection:
        return MetricCollection({
            "map": MeanAveragePrecision(
                box_format="xyxy", iou_type="bbox", backend="faster_coco_eval"
            )
        })

    def update_metrics(
        self, metrics: MetricCollection, outputs: dict[str, torch.Tensor], targets: Targets,
        has: torch.Tensor,
    ) -> None:
        if not bool(has.any()):
            return
        keep = has.nonzero().flatten()
        predictions = self.postprocess({k: self.labelled_rows(v.detach(), has)
                                        for k, v in outputs.items()})
        truth = []
        for i in keep.tolist():
            target = {"boxes": targets[i]["boxes"].float(), "labels": targets[i]["labels"]}
            if "iscrowd" in targets[i]:  # crowd regions: neither hits nor false positives
                target["iscrowd"] = targets[i]["iscrowd"].long()
            truth.append(target)
        metrics.update(predictions, truth)

    def compute_metrics(self, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        """Only the scalar entries of MeanAveragePrecision's result (it also returns lists)."""
        results = metrics["map"].compute()
        return {key: results[key] for key in MAP_KEYS if key in results}

    @classmethod
    def placeholder_target(cls, height: int, width: int) -> dict[str, torch.Tensor]:
        """No boxes, on a canvas of the image's size."""
        return {
            "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                              canvas_size=(height, width)),
            "labels": torch.zeros(0, dtype=torch.int64),
        }

    @classmethod
    def remap_target(cls, target: dict[str, torch.Tensor], lookup: torch.Tensor,
                     num_classes: int | None = None) -> dict[str, torch.Tensor]:
        return {**target, "labels": lookup[target["labels"]]}

    def target_as_prediction(self, target: dict[str, torch.Tensor],
                             crowd: bool = False) -> dict[str, torch.Tensor]:
        """Boxes with scores of 1 and ``"ground_truth": True``; crowd regions are left out,
        or kept and flagged ``iscrowd`` (``crowd=True``, for pictures)."""
        is_crowd = target.get("iscrowd", torch.zeros(len(target["labels"]), dtype=torch.bool))
        keep = torch.ones_like(is_crowd.bool()) if crowd else ~is_crowd.bool()
        truth = {"boxes": target["boxes"][keep].float(), "labels": target["labels"][keep],
                 "scores": torch.ones(int(keep.sum())), "ground_truth": True}
        if crowd:
            truth["iscrowd"] = is_crowd.bool()[keep]
        return truth

    def export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`postprocess` up to (not including) its threshold and NMS, in fixed shapes:
        the ``pre_nms_topk`` highest heatmap peaks' boxes, scores and labels."""
        heat = outputs["heatmap"].float().sigmoid()
        _, classes, height, width = heat.shape
        peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
        k = min(self.pre_nms_topk, classes * height * width)
        scores, index = peaks.flatten(1).topk(k)
        cells = index % (height * width)
        boxes = self.decode_boxes(outputs["box"], cells)
        return {"boxes": boxes, "scores": scores, "labels": index // (height * width)}

    def wandb_boxes(self, prediction: dict[str, torch.Tensor],
                    truth: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Predicted boxes, and the true ones (crowd regions left out)."""
        labels = class_labels(self.class_names)
        boxes = {"predictions": {"box_data": box_data(prediction["boxes"], prediction["labels"],
                                                      prediction["scores"], self.class_names),
                                 "class_labels": labels}}
        if truth is not None:
            keep = ~truth.get("iscrowd", torch.zeros(len(truth["labels"]), dtype=torch.bool))
            boxes["ground_truth"] = {"box_data": box_data(truth["boxes"][keep],
                                                          truth["labels"][keep],
                                                          truth["scores"][keep],
                                                          self.class_names),
                                     "class_labels": labels}
        return boxes

    def resize_prediction(
        self, prediction: dict[str, torch.Tensor], from_size: tuple[int, int],
        to_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Boxes of the top-left ``from_size`` region scaled onto ``to_size`` and clipped to
        it (a box may reach past the image, into letterbox padding or beyond the border)."""
        scale_y, scale_x = to_size[0] / from_size[0], to_size[1] / from_size[1]
        scale = prediction["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
        boxes = clip_boxes_to_image(prediction["boxes"] * scale, tuple(to_size))
        return {**prediction, "boxes": boxes}

    # ---------------------------------------------------------------- output
    def prediction_to_json(self, prediction: dict[str, torch.Tensor]) -> Any:
        return [
            {"box_xyxy": [round(float(v), 2) for v in box], "class_id": int(label),
             "category_id": self.category_ids[int(label)],
             "name": self.class_names[int(label)], "score": round(float(score), 4)}
            for box, label, score in zip(
                prediction["boxes"], prediction["labels"], prediction["scores"]
            )
        ]

    def draw(self, image: torch.Tensor, prediction: dict[str, torch.Tensor]) -> torch.Tensor:
        """Boxes (clipped to the image) in their class colours, best score drawn last (on
        top); a label only where it does not cover a better box's label. A ground truth
        (``"ground_truth": True``) is labelled without scores, its crowd regions
        (``iscrowd``) grey and labelled ``crowd``."""
        boxes = prediction["boxes"].detach().cpu().float()
        if len(boxes) == 0:
            return image
        height, width = image.shape[-2:]
        # To the last pixel, not the border past it: PIL draws x2 itself, so a box reaching
        # past the image keeps a visible edge.
        boxes = clip_boxes_to_image(boxes, (height - 1, width - 1))
        labels = prediction["labels"].cpu()
        scores = prediction["scores"].detach().cpu().float()
        crowd = prediction.get("iscrowd", torch.zeros(len(boxes), dtype=torch.bool)).cpu().bool()
        order = torch.argsort(scores, descending=True, stable=True)
        palette = class_colors(self.num_classes + 1)[1:]
        truth = bool(prediction.get("ground_truth", False))  # names only, no scores
        texts = [
            "crowd" if bool(crowd[i]) else self.class_names[int(labels[i])] if truth
            else f"{self.class_names[int(labels[i])]} {float(scores[i]):.2f}"
            for i in order.tolist()
        ]
        shown = non_overlapping_labels(boxes[order], texts)
        colors = [IGNORE_COLOR if bool(crowd[i]) else palette[int(labels[i])]
                  for i in order.tolist()]
        keep = (boxes[order, 2] > boxes[order, 0]) & (boxes[order, 3] > boxes[order, 1])
        if not bool(keep.any()):
            return image
        index = keep.nonzero().flatten().tolist()
        line = max(1, min(height, width) // 256 + 1)
        # Reversed: the best box is drawn last, on top of the others.
        return draw_bounding_boxes(
            image, boxes[order][index].flip(0), labels=[shown[i] for i in index][::-1],
            colors=[colors[i] for i in index][::-1], width=line, fill_labels=True,
        )


def penalty_reduced_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet's focal loss for Gaussian heatmaps, summed (Zhou et al. 2019, eq. 1).

    ``-sum((1-p)^alpha log p)`` at centres (target == 1) and
    ``-sum((1-y)^beta p^alpha log(1-p))`` elsewhere; the caller divides by the object count.
    """
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    is_centre = target >= 1.0 - 1e-4
    positive = -((1 - p) ** alpha) * log_p
    negative = -((1 - target) ** beta) * (p**alpha) * log_not_p
    return torch.where(is_centre, positive, negative).sum()
