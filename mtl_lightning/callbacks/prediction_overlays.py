"""Predictions drawn over a fixed set of validation images, as PNG files and W&B images.

Every ``every_n_epochs`` validation epochs, the same ``num_images`` validation images (chosen
once, evenly spaced through the samples the validation loop runs on this process) are drawn
from the validation loop's own outputs: ``validation_step`` returns each batch's raw head
outputs, and ``on_validation_batch_end`` keeps the chosen images of that batch (image,
targets, metadata, outputs; a few images, so memory stays flat), so no second forward pass
is made. At the end of the epoch, for each one a PNG is written to
``<run dir>/overlays/epochNNN/<source>_<image id>.png`` (``<image id>.png`` when the sample
names no source; image ids restart per source): the ground truth on the left, the prediction
on the right (mask, boxes with class names and scores, image class), drawn by each task's own
``draw``. Pictures have the image's own aspect ratio: the letterbox padding is cut away (or a
stretched square input is resized back), every prediction and target is mapped there by its
task's ``resize_prediction`` (the same mapping ``predict`` uses), and small images are enlarged
to ``MIN_SIDE``. Boxes scoring below ``draw_score_threshold`` are left out of the pictures
(not out of any metric); ignored pixels of a ground-truth mask are grey, crowd boxes grey
and labelled ``crowd``. With a W&B logger the same images are logged under ``val/overlays`` as
``wandb.Image`` with interactive ground-truth and predicted masks and boxes (class names
attached) and the image-level truth and prediction in the caption, and as the W&B Table
``val/overlay_table``: one row per image with that picture and, per task, the truth, the
prediction and the image's own scores (the task's metrics computed on that image alone, from
the same outputs, e.g. ``detection map_50``, ``segmentation miou``). Users without W&B lose
nothing: the PNG files hold the same pictures. Drawing and W&B logging happen once, at the
end of the epoch, never per batch.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core.apply_func import apply_to_collection
from torchvision.io import write_png

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.callbacks.prediction_writer import confident, draw_order, to_cpu
from mtl_lightning.tasks.wandb_media import WANDB_IGNORE  # noqa: F401 (re-exported)

#: Pictures smaller than this (pixels, shorter side) are enlarged before drawing.
MIN_SIDE = 256


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """One [3, H, W] image of a batch (in [0, 1]: the model normalises it) as uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def ground_truth_as_prediction(task: Any, target: Any, crowd: bool = False) -> Any:
    """A target in the form the task's ``draw`` and ``prediction_to_json`` take: the task's
    own :meth:`~mtl_lightning.tasks.base.Task.target_as_prediction` (``crowd``: keep crowd
    regions, flagged, for pictures)."""
    return task.target_as_prediction(target, crowd=crowd)


def display_size(content: tuple[int, int], original: tuple[int, int]) -> tuple[int, int]:
    """Size of a picture of an image of ``original`` size whose model input holds it in a
    ``content`` region: the original aspect ratio, about the content's resolution, shorter
    side at least ``MIN_SIDE`` (enlarged by a whole factor when that is enough)."""
    factor = max(content) / max(original)
    height, width = max(1, round(original[0] * factor)), max(1, round(original[1] * factor))
    if min(height, width) >= MIN_SIDE:
        return height, width
    whole = -(-MIN_SIDE // min(height, width))
    return height * whole, width * whole


def _resized_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, h, w] -> ``size``: whole-factor enlargements by pixel repetition (crisp),
    anything else bilinear."""
    height, width = image.shape[-2:]
    if size[0] % height == 0 and size[1] % width == 0 and size[0] // height == size[1] // width:
        factor = size[0] // height
        return image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear",
                            align_corners=False, antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def overlay_view(
    pl_module: LightningModule, batch: dict, index: int, prediction: dict
) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
    """The picture of sample ``index`` at its own aspect ratio, with its predictions and its
    ground truth (tasks it is labelled for) mapped onto that picture: ``(image, predicted,
    truth)``. The part of the model input that holds the image is ``meta["content_size"]``
    (all of it when absent); the original size is ``meta["orig_size"]``."""
    image = to_uint8(batch["image"][index])
    meta = batch["meta"][index] if "meta" in batch else {}
    content = tuple(meta.get("content_size", image.shape[-2:]))
    size = display_size(content, tuple(meta.get("orig_size", content)))
    picture = _resized_image(image[:, : content[0], : content[1]], size)
    predicted, truth = {}, {}
    for name in draw_order(prediction, pl_module.tasks):
        task = pl_module.tasks[name]
        predicted[name] = task.resize_prediction(to_cpu(prediction[name]), content, size)
        has, target = task_labels(pl_module, batch, name)
        if has is not None and bool(has[index]) and target is not None:
            target = ground_truth_as_prediction(task, to_cpu(target[index]), crowd=True)
            truth[name] = task.resize_prediction(target, content, size)
    return picture, predicted, truth


def overlay_name(meta: dict, index: int) -> str:
    """The overlay's file stem: ``<source>_<image id>`` (image ids restart per source), or
    the image id, or the position; characters other than letters, digits, ``-``, ``_`` and
    ``.`` become ``_``."""
    stem = str(meta.get("image_id", index))
    if meta.get("source") is not None:
        stem = f"{meta['source']}_{stem}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def take(value: Any, index: list[int]) -> Any:
    """Samples ``index`` of a batch-first collection (a batch, or the model's raw outputs):
    tensors indexed along their first dimension (a copy, detached), lists (metadata,
    detection targets) picked, dicts taken key by key."""
    if isinstance(value, torch.Tensor):
        return value.detach()[index] if value.ndim else value
    if isinstance(value, dict):
        return {key: take(item, index) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [value[i] for i in index]
    return value


def join(parts: Sequence[Any]) -> Any:
    """The concatenation of :func:`take` results, in order (keys that some part lacks, e.g. a
    task one validation loader does not carry, are left out)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts)) if first.ndim else first
    if isinstance(first, dict):
        keys = [key for key in first if all(isinstance(p, dict) and key in p for p in parts)]
        return {key: join([p[key] for p in parts]) for key in keys}
    if isinstance(first, list):
        return [item for part in parts for item in part]
    return first


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` positions in ``range(total)``, evenly spaced, first and last included."""
    count = min(count, total)
    return [round(i * (total - 1) / max(count - 1, 1)) for i in range(count)]


class PredictionOverlays(Callback):
    """Draw ground truth and predictions of fixed validation images, from the validation
    loop's own outputs (no forward pass of its own).

    Args:
        num_images: how many validation images to show (0 switches the callback off).
        every_n_epochs: draw at every n-th validation epoch.
        save_png: write the PNG files in the run directory.
        log_to_wandb: log ``wandb.Image`` objects when the trainer has a W&B logger.
        log_table: with W&B, also log the ``val/overlay_table`` Table of per-image results
            (each shown image's metrics, from the outputs already kept).
        draw_score_threshold: boxes scoring below this are not drawn (pictures only; the
            metrics and the table's text see every prediction).
    """

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, save_png: bool = True,
        log_to_wandb: bool = True, log_table: bool = True, draw_score_threshold: float = 0.3,
    ) -> None:
        self.num_images = num_images
        self.draw_score_threshold = draw_score_threshold
        self.every_n_epochs = max(1, every_n_epochs)
        self.save_png = save_png
        self.log_to_wandb = log_to_wandb
        self.log_table = log_table
        #: positions of the shown images in the validation stream, chosen once per run
        self._indices: list[int] | None = None
        #: (dataloader index, batch index) -> positions in that batch, for this epoch
        self._wanted: dict[tuple[int, int], list[int]] | None = None
        self._kept: list[tuple[dict, dict]] = []

    def _drawing(self, trainer: Trainer) -> bool:
        return (not trainer.sanity_checking and self.num_images > 0
                and trainer.current_epoch % self.every_n_epochs == 0)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._kept, self._wanted = [], None
        if self._drawing(trainer) and trainer.is_global_zero:
            self._wanted = self._plan(trainer)

    def _plan(self, trainer: Trainer) -> dict[tuple[int, int], list[int]]:
        """Where the shown images sit in this epoch's batches: ``(dataloader, batch) ->
        positions``, from the batch samplers' sizes (an evaluation sampler does not
        shuffle, so every epoch runs the same samples in the same order). A loader without
        a sized batch sampler (an iterable data set) gives the first images instead."""
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        limits = list(trainer.num_val_batches)
        slots: list[tuple[int, int, int]] = []
        for loader_index, (loader, limit) in enumerate(zip(loaders, limits)):
            sampler = getattr(loader, "batch_sampler", None)
            if sampler is None or not hasattr(sampler, "__len__"):
                return {}
            count = len(sampler) if limit == float("inf") else int(limit)
            for batch_index, indices in enumerate(itertools.islice(sampler, count)):
                slots += [(loader_index, batch_index, i) for i in range(len(indices))]
        if self._indices is None or max(self._indices, default=-1) >= len(slots):
            self._indices = evenly_spaced(len(slots), self.num_images)
        wanted: dict[tuple[int, int], list[int]] = {}
        for position in self._indices:
            loader_index, batch_index, i = slots[position]
            wanted.setdefault((loader_index, batch_index), []).append(i)
        return wanted

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self._wanted is None:
            return
        if self._wanted:
            index = self._wanted.get((dataloader_idx, batch_idx))
        else:  # no plan (an iterable data set): the first images
            shown = sum(len(part["image"]) for part, _ in self._kept)
            index = list(range(min(len(batch["image"]), self.num_images - shown)))
        if not index:
            return
        part = take({key: batch[key] for key in ("image", "targets", "has", "meta")
                     if key in batch}, index)
        raw = outputs.get("outputs") if isinstance(outputs, dict) else None
        if raw is None:  # a validation_step that returns no outputs: run these images only
            raw = pl_module(part["image"])
        # float32: under bf16 autocast the outputs are bfloat16, whose CPU kernels are slow
        # for the drawing's post-processing; a few images' worth is cheap to convert
        self._kept.append((part, apply_to_collection(take(raw, index), torch.Tensor,
                                                     _as_float32)))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        kept, self._kept, self._wanted = self._kept, [], None
        if kept and self._drawing(trainer):
            self._draw(trainer, pl_module, join([b for b, _ in kept]), join([o for _, o in kept]))

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule, batch: dict,
              outputs: dict) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        to_wandb = self.log_to_wandb and bool(loggers)
        with torch.no_grad():
            per_task = {name: pl_module.tasks[name].postprocess(out)
                        for name, out in outputs.items()}
            predictions = [{name: values[i] for name, values in per_task.items()}
                           for i in range(len(batch["image"]))]
            scores = None
            if to_wandb and self.log_table:
                scores = per_image_scores(pl_module, outputs, batch)
        views = [overlay_view(pl_module, batch, i, predictions[i])
                 for i in range(len(predictions))]
        if self.save_png:
            folder = run_directory(trainer) / "overlays" / f"epoch{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (meta, view) in enumerate(zip(batch["meta"], views)):
                picture = side_by_side(pl_module, view, self.draw_score_threshold)
                # zlib level 1: faster than the default 6, a few more bytes (docs/performance.md)
                write_png(picture, str(folder / f"{overlay_name(meta, i)}.png"),
                          compression_level=1)
        if to_wandb:
            self._log_wandb(loggers[0], pl_module, batch, predictions, views, scores,
                            trainer.global_step)

    def _log_wandb(
        self, logger: WandbLogger, pl_module: LightningModule, batch: dict,
        predictions: list[dict], views: list[tuple], scores: list[dict] | None, step: int,
    ) -> None:
        overlays = [_wandb_image(pl_module, batch, i, view, self.draw_score_threshold)
                    for i, view in enumerate(views)]
        logged: dict[str, Any] = {"val/overlays": overlays}
        if scores is not None:
            logged["val/overlay_table"] = _wandb_table(
                pl_module, batch, predictions, scores, views, self.draw_score_threshold,
                images=overlays,  # the same wandb.Image objects: their media built once
            )
        logger.log_metrics(logged, step=step)


def side_by_side(pl_module: LightningModule, view: tuple, draw_score_threshold: float = 0.0
                 ) -> torch.Tensor:
    """Ground truth (left) and prediction (right) of an :func:`overlay_view`, each drawn by
    its task's ``draw``; boxes below ``draw_score_threshold`` are left out. Tasks that draw
    a map of their own (depth, normals) add a row each under the image: truth and
    prediction (black where the image has no ground truth)."""
    image, predicted, truth = view
    left, right = image.clone(), image.clone()
    rows = []
    for name in draw_order(predicted, pl_module.tasks):
        task = pl_module.tasks[name]
        if task.draws_panel:  # a depth or normal map: a row of its own under the image
            truth_panel = (task.draw(image, truth[name]) if name in truth
                           else torch.zeros_like(image))
            rows.append((truth_panel, task.draw(image, predicted[name])))
            continue
        if name in truth:
            left = task.draw(left, truth[name])
        right = task.draw(right, confident(predicted[name], draw_score_threshold))
    gap = torch.full((3, image.shape[1], 4), 255, dtype=torch.uint8)
    lines = [torch.cat([a, gap, b], dim=2) for a, b in [(left, right), *rows]]
    spacer = torch.full((3, 4, lines[0].shape[2]), 255, dtype=torch.uint8)
    return torch.cat([part for line in lines for part in (line, spacer)][:-1], dim=1)


def per_image_scores(
    pl_module: LightningModule, outputs: dict[str, Any], batch: dict
) -> list[dict[str, dict[str, float]]]:
    """Each image's own scores: ``[{task: {metric: value}}]``, every task's metrics computed
    on that image alone (a fresh collection from ``task.build_metrics``, updated with that
    image's slice of ``outputs``, the model's raw outputs of the batch's images, and of the
    targets). Tasks the image is not labelled for are left out."""
    images = batch["image"]
    targets = batch["targets"]
    scores: list[dict[str, dict[str, float]]] = [{} for _ in range(len(images))]
    for name, task in pl_module.tasks.items():
        has = batch["has"].get(name)
        if has is None or name not in targets:
            continue
        only = torch.ones(1, dtype=torch.bool, device=images.device)
        for i in range(len(images)):
            if not bool(has[i]):
                continue
            metrics = task.build_metrics("val").to(images.device)
            for metric in metrics.values():
                # Only rank 0 draws: a sync across processes in compute() would never return.
                metric.distributed_available_fn = _never
            with warnings.catch_warnings():  # one image: torchmetrics warns of absent classes
                warnings.simplefilter("ignore")
                # The image's own slice: a metric over the whole batch with the others
                # masked out would count every image's pixels once per image.
                task.update_metrics(metrics, take(outputs[name], [i]), take(targets[name], [i]),
                                    only)
                values = task.compute_metrics(metrics)
            scores[i][name] = {metric: float(value) for metric, value in values.items()}
    return scores


def _never() -> bool:
    return False


def _wandb_image(pl_module: LightningModule, batch: dict, i: int, view: tuple,
                 draw_score_threshold: float = 0.0) -> Any:
    """One image (an :func:`overlay_view`) as ``wandb.Image`` with its truth and prediction
    masks, boxes and caption."""
    import wandb

    image, predicted, truth = view
    extra: dict[str, Any] = {"caption": _caption(pl_module, batch, i, predicted, truth)}
    masks = _media(pl_module, predicted, truth, "masks")
    boxes = _media(pl_module, predicted, truth, "boxes", draw_score_threshold)
    if masks:
        extra["masks"] = masks
    if boxes:
        extra["boxes"] = boxes
    return wandb.Image(image.permute(1, 2, 0).numpy(), **extra)


def _wandb_table(
    pl_module: LightningModule, batch: dict, predictions: list[dict], scores: list[dict],
    views: list[tuple] | None = None, draw_score_threshold: float = 0.0,
    images: list[Any] | None = None,
) -> Any:
    """``wandb.Table``: one row per image, columns ``image_id``, ``overlay`` and per task
    ``<task> truth``, ``<task> prediction`` and ``<task> <metric>`` (empty when unlabelled).
    ``images``: the overlays' ``wandb.Image`` objects when already made."""
    import wandb

    views = views or [overlay_view(pl_module, batch, i, p) for i, p in enumerate(predictions)]
    rows: list[dict[str, Any]] = []
    for i, prediction in enumerate(predictions):
        meta = batch["meta"][i] if "meta" in batch else {}
        row: dict[str, Any] = {
            "image_id": overlay_name(meta, i),
            "overlay": (images[i] if images is not None
                        else _wandb_image(pl_module, batch, i, views[i], draw_score_threshold)),
        }
        for name in draw_order(prediction, pl_module.tasks):
            task = pl_module.tasks[name]
            truth = None
            has, target = task_labels(pl_module, batch, name)
            if has is not None and bool(has[i]) and target is not None:
                target = ground_truth_as_prediction(task, to_cpu(target[i]))
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
    ``background 81%, circle 12%`` (the classes of a mask, by area); any other record as
    ``key value`` pairs."""
    entries = task.prediction_to_json(value)
    if isinstance(entries, dict):
        entries = [entries]
    if entries and not all(isinstance(e, dict) and "name" in e for e in entries):
        return "; ".join(", ".join(f"{k} {v}" for k, v in e.items()) if isinstance(e, dict)
                         else str(e) for e in entries)
    boxes = (isinstance(value, dict) and "boxes" in value) or any("box_xyxy" in e
                                                                  for e in entries)
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


def task_labels(pl_module: LightningModule, batch: dict, name: str) -> tuple[Any, Any]:
    """Which samples of ``batch`` are labelled for task ``name`` and its targets (a derived
    task's are made from its source's, as in training); ``(None, None)`` when the batch
    has none."""
    task = pl_module.tasks[name]
    source = task.source or name
    if source not in batch["targets"] or source not in batch.get("has", {}):
        return None, None
    target = batch["targets"][source]
    if task.source is not None:
        target = task.derive_targets(target)
    return batch["has"][source], target


def _media(pl_module: LightningModule, predicted: dict, truth: dict, kind: str,
           draw_score_threshold: float = 0.0) -> dict:
    """Every task's W&B masks or boxes (``kind``) of one picture; when several tasks give
    them, each key is prefixed with the task's name (``drivable_prediction``)."""
    parts = {}
    for name in draw_order(predicted, pl_module.tasks):
        task = pl_module.tasks[name]
        shown = confident(predicted[name], draw_score_threshold)
        media = getattr(task, f"wandb_{kind}")(shown, truth.get(name))
        if media:
            parts[name] = media
    if len(parts) == 1:
        return next(iter(parts.values()))
    return {f"{name}_{key}": value for name, media in parts.items()
            for key, value in media.items()}


def _caption(pl_module: LightningModule, batch: dict, i: int, predicted: dict,
             truth: dict) -> str:
    meta = batch["meta"][i] if "meta" in batch else {}
    lines = []
    for name in draw_order(predicted, pl_module.tasks):
        line = pl_module.tasks[name].caption(predicted[name], truth.get(name))
        if line:
            lines.append(line)
    return " | ".join(lines) if lines else overlay_name(meta, i)
