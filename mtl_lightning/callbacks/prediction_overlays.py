"""Predictions drawn over a fixed set of validation images, as PNG files and W&B images.

Every ``every_n_epochs`` validation epochs, the same ``num_images`` validation images (chosen
once, evenly spaced through the split) go through the model. For each one a PNG is written to
``<run dir>/overlays/epochNNN/<image id>.png``: the ground truth on the left, the prediction on
the right (mask, boxes with class names and scores, image class), drawn by each task's own
``draw``. With a W&B logger the same images are logged under ``val/overlays`` as
``wandb.Image`` with interactive ground-truth and predicted masks and boxes (class names
attached) and the image-level truth and prediction in the caption, and as the W&B Table
``val/overlay_table``: one row per image with that picture and, per task, the truth, the
prediction and the image's own scores (the task's metrics computed on that image alone, e.g.
``detection map_50``, ``segmentation miou``). Users without W&B lose nothing: the PNG files
hold the same pictures.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_only
from torchvision.io import write_png

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.callbacks.prediction_writer import draw_order, to_cpu
from mtl_lightning.data.collate import collate_multitask

#: Pictures smaller than this (pixels, shorter side) are enlarged before drawing.
MIN_SIDE = 256


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """One [3, H, W] image of a batch (in [0, 1]: the model normalises it) as uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def ground_truth_as_prediction(task: str, target: Any) -> Any:
    """A target in the form the task's ``draw`` takes (scores of 1)."""
    if task == "classification":
        labels = target.nonzero().flatten() if target.ndim else target.reshape(1)
        return {"labels": labels, "scores": torch.ones(len(labels))}
    if task == "detection":
        keep = ~target.get("iscrowd", torch.zeros(len(target["labels"]), dtype=torch.bool))
        return {"boxes": target["boxes"][keep], "labels": target["labels"][keep],
                "scores": torch.ones(int(keep.sum()))}
    return target.long()


class PredictionOverlays(Callback):
    """Draw ground truth and predictions of fixed validation images.

    Args:
        num_images: how many validation images to show (0 switches the callback off).
        every_n_epochs: draw at every n-th validation epoch.
        save_png: write the PNG files in the run directory.
        log_to_wandb: log ``wandb.Image`` objects when the trainer has a W&B logger.
        log_table: with W&B, also log the ``val/overlay_table`` Table of per-image results
            (one more forward pass of the shown images to score each one).
    """

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, save_png: bool = True,
        log_to_wandb: bool = True, log_table: bool = True,
    ) -> None:
        self.num_images = num_images
        self.every_n_epochs = max(1, every_n_epochs)
        self.save_png = save_png
        self.log_to_wandb = log_to_wandb
        self.log_table = log_table
        self._indices: list[int] | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.num_images <= 0:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        self._draw(trainer, pl_module)

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datasets = getattr(trainer.datamodule, "datasets", {})
        dataset = datasets.get("val") if isinstance(datasets, dict) else None
        if dataset is None or len(dataset) == 0:
            return
        if self._indices is None:  # chosen once per run: the same images every time
            count = min(self.num_images, len(dataset))
            self._indices = [round(i * (len(dataset) - 1) / max(count - 1, 1))
                             for i in range(count)]
        batch = collate_multitask([dataset[i] for i in self._indices])
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        to_wandb = self.log_to_wandb and bool(loggers)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = batch["image"].to(pl_module.device)
            predictions = pl_module.predict_tasks(images)
            scores = None
            if to_wandb and self.log_table:
                scores = per_image_scores(pl_module, images, batch)
        pl_module.train(was_training)
        pictures = [self._picture(pl_module, batch, i, predictions[i])
                    for i in range(len(self._indices))]
        if self.save_png:
            folder = run_directory(trainer) / "overlays" / f"epoch{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for meta, picture in zip(batch["meta"], pictures):
                # zlib level 1: 1.7x faster than the default 6 on an overlay, 1.14x the bytes
                write_png(picture, str(folder / f"{meta.get('image_id', 'image')}.png"),
                          compression_level=1)
        if to_wandb:
            self._log_wandb(loggers[0], pl_module, batch, predictions, scores,
                            trainer.global_step)

    def _picture(
        self, pl_module: LightningModule, batch: dict, index: int, prediction: dict
    ) -> torch.Tensor:
        """Ground truth (left) and prediction (right), side by side; small images are
        enlarged (nearest neighbour) to at least ``MIN_SIDE`` pixels so labels stay legible."""
        image = to_uint8(batch["image"][index])
        scale = max(1, MIN_SIDE // min(image.shape[-2:]))
        image = _enlarged(image, scale)
        truth, predicted = image.clone(), image.clone()
        for name in draw_order(prediction):
            task = pl_module.tasks[name]
            if bool(batch["has"].get(name, torch.zeros(index + 1))[index]):
                target = ground_truth_as_prediction(name, batch["targets"][name][index])
                truth = task.draw(truth, _scaled(name, target, scale))
            predicted = task.draw(predicted, _scaled(name, to_cpu(prediction[name]), scale))
        gap = torch.full((3, image.shape[1], 4), 255, dtype=torch.uint8)
        return torch.cat([truth, gap, predicted], dim=2)

    def _log_wandb(
        self, logger: WandbLogger, pl_module: LightningModule, batch: dict,
        predictions: list[dict], scores: list[dict] | None, step: int,
    ) -> None:
        overlays = [_wandb_image(pl_module, batch, i, p) for i, p in enumerate(predictions)]
        logged: dict[str, Any] = {"val/overlays": overlays}
        if scores is not None:
            logged["val/overlay_table"] = _wandb_table(pl_module, batch, predictions, scores)
        logger.log_metrics(logged, step=step)


def per_image_scores(
    pl_module: LightningModule, images: torch.Tensor, batch: dict
) -> list[dict[str, dict[str, float]]]:
    """Each image's own scores: ``[{task: {metric: value}}]``, every task's metrics computed
    on that image alone (a fresh collection from ``task.build_metrics``, updated with a
    ``has`` mask selecting the image). Tasks the image is not labelled for are left out."""
    outputs = pl_module(images)
    targets = move_data_to_device(batch["targets"], images.device)
    scores: list[dict[str, dict[str, float]]] = [{} for _ in range(len(images))]
    for name, task in pl_module.tasks.items():
        has = batch["has"].get(name)
        if has is None or name not in targets:
            continue
        for i in range(len(images)):
            if not bool(has[i]):
                continue
            only = torch.zeros(len(images), dtype=torch.bool, device=images.device)
            only[i] = True
            metrics = task.build_metrics("val").to(images.device)
            for metric in metrics.values():
                # Only rank 0 draws: a sync across processes in compute() would never return.
                metric.distributed_available_fn = _never
            with warnings.catch_warnings():  # one image: torchmetrics warns of absent classes
                warnings.simplefilter("ignore")
                task.update_metrics(metrics, outputs[name], targets[name], only)
                values = task.compute_metrics(metrics)
            scores[i][name] = {metric: float(value) for metric, value in values.items()}
    return scores


def _never() -> bool:
    return False


def _wandb_image(pl_module: LightningModule, batch: dict, i: int, prediction: dict) -> Any:
    """One image as ``wandb.Image`` with its truth and prediction masks, boxes and caption."""
    import wandb

    extra: dict[str, Any] = {"caption": _caption(pl_module, batch, i, prediction)}
    masks = _wandb_masks(pl_module, batch, i, prediction)
    boxes = _wandb_boxes(pl_module, batch, i, prediction)
    if masks:
        extra["masks"] = masks
    if boxes:
        extra["boxes"] = boxes
    return wandb.Image(to_uint8(batch["image"][i]).permute(1, 2, 0).numpy(), **extra)


def _wandb_table(
    pl_module: LightningModule, batch: dict, predictions: list[dict], scores: list[dict]
) -> Any:
    """``wandb.Table``: one row per image, columns ``image_id``, ``overlay`` and per task
    ``<task> truth``, ``<task> prediction`` and ``<task> <metric>`` (empty when unlabelled)."""
    import wandb

    rows: list[dict[str, Any]] = []
    for i, prediction in enumerate(predictions):
        row: dict[str, Any] = {
            "image_id": str(batch["meta"][i].get("image_id", i)),
            "overlay": _wandb_image(pl_module, batch, i, prediction),
        }
        for name in draw_order(prediction):
            task = pl_module.tasks[name]
            truth = None
            if bool(batch["has"].get(name, torch.zeros(i + 1))[i]):
                target = ground_truth_as_prediction(name, batch["targets"][name][i])
                truth = describe(task, target, scores=False)
            row[f"{name} truth"] = truth
            row[f"{name} prediction"] = describe(task, to_cpu(prediction[name]))
            for metric, value in scores[i].get(name, {}).items():
                row[f"{name} {metric}"] = value
        rows.append(row)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])


def describe(task: Any, value: Any, scores: bool = True) -> str:
    """A short text of one truth or prediction, from the task's own ``prediction_to_json``:
    ``circle 0.93`` (a class), ``3 boxes: circle 0.91, ...`` (the five best boxes),
    ``background 81%, circle 12%`` (the classes of a mask, by area)."""
    entries = task.prediction_to_json(value)
    if isinstance(entries, dict):
        entries = [entries]
    boxes = getattr(task, "name", "") == "detection" or any("box_xyxy" in e for e in entries)
    if entries and "pixels" in entries[0]:
        total = sum(e["pixels"] for e in entries) or 1
        ranked = sorted(entries, key=lambda e: -e["pixels"])
        return ", ".join(f"{e['name']} {e['pixels'] / total:.0%}" for e in ranked)
    ranked = sorted(entries, key=lambda e: -e.get("score", 1.0))
    names = [f"{e['name']} {e['score']:.2f}" if scores and "score" in e else str(e["name"])
             for e in ranked[:5]]
    text = ", ".join(names) + (", ..." if len(ranked) > 5 else "")
    if boxes:
        return f"{len(entries)} boxes: {text}" if entries else "0 boxes"
    return text or "(none)"


def _enlarged(picture: torch.Tensor, scale: int) -> torch.Tensor:
    """Repeat every pixel ``scale`` times along both image axes (the last two)."""
    if scale == 1:
        return picture
    return picture.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def _scaled(task: str, value: Any, scale: int) -> Any:
    """A prediction or target drawn on an image enlarged ``scale`` times."""
    if scale == 1:
        return value
    if task == "segmentation":
        return _enlarged(value, scale)
    if task == "detection":
        return {**value, "boxes": value["boxes"] * scale}
    return value


def _labels(task: Any) -> dict[int, str]:
    return dict(enumerate(task.class_names))


def _wandb_masks(pl_module: LightningModule, batch: dict, i: int, prediction: dict) -> dict:
    if "segmentation" not in prediction:
        return {}
    task = pl_module.tasks["segmentation"]
    labels = {**_labels(task), 255: "ignore"}
    masks = {"prediction": {"mask_data": prediction["segmentation"].cpu().numpy(),
                            "class_labels": labels}}
    if bool(batch["has"]["segmentation"][i]):
        masks["ground_truth"] = {"mask_data": batch["targets"]["segmentation"][i].numpy(),
                                 "class_labels": labels}
    return masks


def _box_data(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
              names: list[str]) -> list[dict]:
    return [
        {"position": {"minX": float(b[0]), "minY": float(b[1]), "maxX": float(b[2]),
                      "maxY": float(b[3])},
         "domain": "pixel", "class_id": int(c), "scores": {"score": float(s)},
         "box_caption": f"{names[int(c)]} {float(s):.2f}"}
        for b, c, s in zip(boxes.tolist(), labels.tolist(), scores.tolist())
    ]


def _wandb_boxes(pl_module: LightningModule, batch: dict, i: int, prediction: dict) -> dict:
    if "detection" not in prediction:
        return {}
    task = pl_module.tasks["detection"]
    found = to_cpu(prediction["detection"])
    boxes = {"predictions": {"box_data": _box_data(found["boxes"], found["labels"],
                                                   found["scores"], task.class_names),
                             "class_labels": _labels(task)}}
    if bool(batch["has"]["detection"][i]):
        truth = ground_truth_as_prediction("detection", batch["targets"]["detection"][i])
        boxes["ground_truth"] = {"box_data": _box_data(truth["boxes"], truth["labels"],
                                                       truth["scores"], task.class_names),
                                 "class_labels": _labels(task)}
    return boxes


def _caption(pl_module: LightningModule, batch: dict, i: int, prediction: dict) -> str:
    if "classification" not in prediction:
        return str(batch["meta"][i].get("image_id", i))
    task = pl_module.tasks["classification"]
    predicted = ", ".join(task.class_names[int(c)] for c in prediction["classification"]["labels"])
    caption = f"predicted: {predicted or '(none)'}"
    if bool(batch["has"]["classification"][i]):
        truth = ground_truth_as_prediction("classification",
                                           batch["targets"]["classification"][i])
        true_names = ", ".join(task.class_names[int(c)] for c in truth["labels"])
        caption = f"true: {true_names} / {caption}"
    return caption
