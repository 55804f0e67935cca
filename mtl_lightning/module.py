"""MultiTaskModule: one shared timm backbone and neck, one head per task.

Read top to bottom: the model is built from the task list and the data's class information;
a step runs the shared trunk once, each task's head, loss and metrics; the balancer turns
task losses into one loss; AdamW with warm-up + cosine (timm's factories) optimises it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from mtl_lightning.balancing import Balancer, StaticWeighting
from mtl_lightning.models import Backbone, FeaturePyramid
from mtl_lightning.tasks import build_task

Batch = dict[str, Any]
STAGES = ("train", "val", "test")


class MultiTaskModule(LightningModule):
    """Hard parameter sharing: backbone -> FPN neck -> {task: head}.

    Args:
        tasks: task name -> that task's options (``null`` for defaults), e.g.
            ``{"classification": {"label_smoothing": 0.1}, "detection": null}``.
            ``None`` trains every task the data labels.
        task_info: task name -> ``{"num_classes", "class_names"}``; linked from the data
            module by the CLI, so class counts are never typed by hand.
        backbone: timm model name (any CNN with ``features_only``).
        pretrained: load pretrained backbone weights (hub, or ``pretrained_file``).
        pretrained_file: local backbone weights file, for offline use.
        drop_path_rate: stochastic depth in the backbone.
        backbone_kwargs: further timm model arguments, e.g. ``{"channels": [32, 64, 128, 256],
            "stem_width": 32}`` for a half-width ResNet.
        neck_channels: width of the feature pyramid.
        balancer: how task losses are combined (default: equal static weights).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup_fraction: fraction of all steps spent warming the learning rate up linearly.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        train_metrics: also compute metrics on training batches (detection mAP excepted).
        channels_last: run the network in channels-last memory format.
    """

    def __init__(
        self,
        tasks: dict[str, dict[str, Any] | None] | None = None,
        task_info: dict[str, dict[str, Any]] | None = None,
        backbone: str = "resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        drop_path_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        neck_channels: int = 96,
        balancer: Balancer | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        train_metrics: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["balancer"])
        task_info = task_info or {}
        if tasks is None:
            tasks = dict.fromkeys(task_info)
        if not tasks:
            raise ValueError("model.tasks is empty and the data labels no task; name the tasks.")
        self.backbone = Backbone(
            backbone, pretrained=pretrained, pretrained_file=pretrained_file,
            drop_path_rate=drop_path_rate, model_kwargs=backbone_kwargs,
        )
        self.neck = FeaturePyramid(self.backbone.channels, self.backbone.reductions, neck_channels)
        self.tasks = nn.ModuleDict()
        for name, options in tasks.items():
            task = build_task(name, options, task_info.get(name))
            task.build_head(neck_channels, self.backbone.channels, self.backbone.reductions)
            self.tasks[name] = task
        self.balancer = balancer if balancer is not None else StaticWeighting()
        unknown = set(getattr(self.balancer, "weights", {})) - set(self.tasks)
        if unknown:
            raise ValueError(
                f"Balancer weights name tasks that are not trained: {sorted(unknown)}; "
                f"tasks are {sorted(self.tasks)}."
            )
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": task.build_metrics(stage)
            for stage in STAGES for name, task in self.tasks.items()
            if stage != "train" or (train_metrics and name != "detection")
        })
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- forward
    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """Raw outputs of every task head for a batch of normalised images."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        features = self.neck(self.backbone(image))
        size = (image.shape[-2], image.shape[-1])
        return {name: task(features, size) for name, task in self.tasks.items()}

    def predict_tasks(self, image: torch.Tensor) -> list[dict[str, Any]]:
        """Post-processed predictions, one dict ``{task: prediction}`` per image."""
        outputs = self(image)
        per_task = {name: self.tasks[name].postprocess(out) for name, out in outputs.items()}
        return [{name: preds[i] for name, preds in per_task.items()} for i in range(len(image))]

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        outputs = self(batch["image"])
        size = len(batch["image"])
        losses: dict[str, torch.Tensor] = {}
        present: list[str] = []  # tasks with a labelled sample in this batch (logged)
        for name, task in self.tasks.items():
            has = self._has(batch, name)
            if bool(has.any()):
                present.append(name)
            target = batch["targets"].get(name)
            losses[name] = task.loss(outputs[name], target, has)
            key = f"{stage}_{name}"
            if key in self.metrics:
                metrics = self.metrics[key]
                task.update_metrics(metrics, outputs[name], target, has)
        total, weights = self.balancer(losses)
        on_step = stage == "train"
        for name in present:
            loss = losses[name]
            self.log(f"{stage}/{name}/loss", loss.detach(), on_step=on_step, on_epoch=not on_step,
                     batch_size=size)
        self.log(f"{stage}/mtl/loss", total.detach(), on_step=on_step, on_epoch=not on_step,
                 prog_bar=True, batch_size=size)
        if stage == "train":
            for name, weight in weights.items():
                self.log(f"train/mtl/weight/{name}", weight, on_step=True, batch_size=size)
        return total

    def _has(self, batch: Batch, name: str) -> torch.Tensor:
        has = batch.get("has", {}).get(name)
        if has is None or name not in batch["targets"]:
            return torch.zeros(len(batch["image"]), dtype=torch.bool, device=self.device)
        return has

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Several validation loaders (one per data source) share the same metrics: each
        # sample updates only the tasks it is labelled for.
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """Predictions mapped back to each image's original size, with its metadata."""
        predictions = self.predict_tasks(batch["image"])
        input_size = tuple(batch["image"].shape[-2:])
        results = []
        for meta, prediction in zip(batch["meta"], predictions):
            original = tuple(meta["orig_size"])
            resized = {
                name: self.tasks[name].resize_prediction(pred, input_size, original)
                for name, pred in prediction.items()
            }
            results.append({"meta": meta, "predictions": resized})
        return results

    # ---------------------------------------------------------------- metrics
    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        """Compute each task's metrics (torchmetrics syncs them across processes) and log
        ``{stage}/{task}/{metric}`` plus ``{stage}/mtl/score``, the mean headline metric."""
        headline = []
        for name, task in self.tasks.items():
            key = f"{stage}_{name}"
            if key not in self.metrics or not any(
                metric.update_called for metric in self.metrics[key].values()
            ):
                continue
            values = task.compute_metrics(self.metrics[key])
            self.metrics[key].reset()
            for metric, value in values.items():
                self.log(f"{stage}/{name}/{metric}", value.float(), sync_dist=False)
            if task.headline_metric in values:
                headline.append(values[task.headline_metric].float())
        if headline and stage != "train":
            self.log(f"{stage}/mtl/score", torch.stack(headline).mean(), sync_dist=False)

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no decay on norms and biases) with linear warm-up and cosine decay, per step."""
        hp = self.hparams
        optimizer = create_optimizer_v2(self, opt="adamw", lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(total * hp.warmup_fraction)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=total, lr_min=hp.lr * hp.min_lr_ratio, warmup_t=warmup,
            warmup_lr_init=hp.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """timm schedulers are stepped by update count, not by epoch."""
        scheduler.step_update(num_updates=self.global_step)
