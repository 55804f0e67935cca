"""MultiTaskModule: one shared timm backbone and neck, one head per task.

Read top to bottom: the model is built from the task list and the data's class information;
a step normalises the [0, 1] images with the backbone's own statistics, runs the shared trunk
once, each task's head, loss and metrics; the balancer turns task losses into one update;
AdamW with warm-up + cosine (timm's factories) optimises it.

Balancing stays inside Lightning's automatic optimisation, so gradient clipping, gradient
accumulation, precision plugins and schedulers work unchanged for every method. One training
step, in the order Lightning runs it (:meth:`MultiTaskModule.training_step` tells it in full):

1. ``training_step``: the forward pass gives each task's loss and the representation the
   architecture returned with its features; the losses are made global; then
   - a loss weighting (static, uncertainty, DWA, ...) combines them into
     ``sum_t w_t L_t``, which Lightning back-propagates;
   - a gradient weighting (MGDA, PCGrad, UPGrad, ...) hands them to ``backward``;
2. ``backward`` (Lightning's hook, with the loss-scaled loss): the ordinary backward, or the
   gradient weighting's own (:meth:`~mtl_lightning.balancing.GradientWeighting.backward`:
   task gradients, weights, the combined gradient written to ``.grad``);
3. ``on_before_optimizer_step``: a non-finite gradient skips the step;
4. Lightning clips and steps; ``on_train_batch_end`` logs the step's
   :class:`~mtl_lightning.balancing.BalancingRecord` (returned by the step, completed by a
   gradient weighting's backward) and calls the balancer's ``after_optimizer_step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from mtl_lightning.balancing import (
    Balancer,
    BalancingRecord,
    GradientStatistics,
    GradientWeighting,
    LossWeighting,
    StaticWeighting,
    TaskLosses,
)
from mtl_lightning.balancing.task_gradients import SharedStructure, compute_task_gradients
from mtl_lightning.metrics import delta_m, lower_is_better_of
from mtl_lightning.models import Backbone
from mtl_lightning.models.architectures import ArchitectureOutput, build_architecture
from mtl_lightning.models.input_normalization import InputNormalization, fill_legacy_statistics
from mtl_lightning.models.param_groups import optimizer_param_groups
from mtl_lightning.tasks import build_task, trained_tasks

Batch = dict[str, Any]


class CheckpointMismatchError(ValueError):
    """A checkpoint was trained for another task set, backbone or class list."""


def checkpoint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the hyperparameters a checkpoint was saved with and this model's."""
    problems = []
    saved_tasks = sorted(saved.get("tasks") or saved.get("task_info") or {})
    tasks = sorted(current.get("tasks") or current.get("task_info") or {})
    if saved_tasks and tasks and saved_tasks != tasks:
        problems.append(f"it has tasks {saved_tasks}, this model {tasks}")
    for key in ("backbone", "backbone_kwargs", "neck_channels", "image_size", "vit_blocks"):
        if key in saved and saved.get(key) != current.get(key):
            problems.append(f"its {key} is {saved.get(key)!r}, this model's {current.get(key)!r}")
    saved_info, info = saved.get("task_info") or {}, current.get("task_info") or {}
    for task in sorted(set(saved_info) & set(info)):
        before = saved_info[task].get("class_names")
        now = info[task].get("class_names")
        if before is not None and now is not None and list(before) != list(now):
            problems.append(f"its {task} classes are {list(before)}, this data's {list(now)}")
    return problems


class NonFiniteLossError(ValueError):
    """A NaN or infinite loss or gradient stopped the run (``nonfinite_policy="stop"``)."""


@dataclass
class AwaitingBackward:
    """A gradient weighting's step between ``training_step`` and ``backward``: the task
    losses (with their graph), the representation of the same forward pass, and the record
    the step returned, which the backward completes with the weights."""

    losses: TaskLosses
    representation: list[torch.Tensor]
    record: BalancingRecord


STAGES = ("train", "val", "test")


class MultiTaskModule(LightningModule):
    """An architecture (hard sharing by default: backbone -> FPN neck) -> {task: head}.

    Args:
        tasks: task instance name -> that task's options (``null`` for defaults), e.g.
            ``{"classification": {"label_smoothing": 0.1}, "detection": null}``. Options may
            name the instance's type (``{"drivable": {"type": "segmentation"}}``: two
            segmentation tasks in one model) or a Task class from anywhere
            (``{"fg": {"class_path": "my_project.ForegroundTask", "init_args": {...}}}``);
            see :mod:`mtl_lightning.tasks`.
            ``None`` (the configs' default) trains every task the data labels, so a data set
            that labels no image class trains segmentation and detection only. A named task
            the data does not label is an error.
        task_info: task name -> ``{"num_classes", "class_names"}``; linked from the data
            module by the CLI, so class counts are never typed by hand.
        task_options: task name -> default options of that task, applied to whichever tasks
            are trained (named or followed from the data); options given in ``tasks`` win.
            A config can so fix e.g. the decoder width once for any data set.
        backbone: timm model name: a hierarchical model (ResNet, EfficientNet, ConvNeXt,
            Swin, ...) or a plain ViT (ViT, DeiT, EVA, ...; through a simple feature pyramid),
            see :mod:`mtl_lightning.models.backbone`.
        pretrained: load pretrained backbone weights (hub, or ``pretrained_file``).
        pretrained_file: local backbone weights file (a state dict of that timm model), for
            offline use.
        drop_path_rate: stochastic depth in the backbone.
        backbone_kwargs: further timm model arguments, e.g. ``{"channels": [32, 64, 128, 256],
            "stem_width": 32}`` for a half-width ResNet.
        image_size: input size for a backbone built for one size (Hiera, MaxViT, ...; timm's
            ``img_size``); set it to the data's ``image_size``. Others ignore it.
        vit_blocks: blocks of a plain ViT that feed its pyramid: one (default: the last) or
            four (one per level, fine to coarse).
        image_mean, image_std: input statistics (per channel, for images in [0, 1]); by
            default the backbone's pretrained ones (timm's data config). The values used are
            saved in the checkpoint (buffers and hyper-parameters), so predict and export
            normalise alike.
        neck_channels: width of the feature pyramid.
        architecture: how the tasks share parameters: ``hard`` (one backbone and neck),
            ``cross_stitch``, ``mtan`` or ``ensemble``
            (see :mod:`mtl_lightning.models.architectures`).
        architecture_options: options of the architecture, e.g. ``{"self_weight": 0.9}``.
        balancer: how task losses become one update (default: equal static weights); any
            class of :mod:`mtl_lightning.balancing`, e.g. ``configs/balancer/mgda.yaml``.
        lr: peak learning rate of AdamW.
        backbone_lr_ratio: the backbone's learning rate relative to ``lr`` (heads, neck and a
            ViT's pyramid learn at ``lr``), e.g. 0.1 for a pretrained backbone.
        layer_decay: layer-wise learning-rate decay inside the backbone (e.g. 0.75 for a ViT):
            layer ``i`` of ``L`` learns at ``decay ** (L - 1 - i)`` times the backbone's rate
            (see :mod:`mtl_lightning.models.param_groups`). ``None`` disables it.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup_fraction: fraction of all steps spent warming the learning rate up linearly.
        warmup_steps: warm up for this many optimizer steps instead (at most all of them): a
            warm-up that does not grow with ``max_epochs``, for runs that ``max_time`` ends.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        train_metrics: also compute metrics on training batches (detection mAP excepted).
        train_metrics_every: update the training metrics on every n-th training batch only:
            the epoch's training metrics are then an estimate from a 1/n sample of its
            batches, at 1/n of the metrics' cost (what that saves: docs/performance.md).
            1 updates on every batch.
        channels_last: run the network in channels-last memory format.
        compile: compile the network (architecture and task heads) with ``torch.compile``,
            in place, so checkpoints keep their keys. Losses, target assignment and
            post-processing stay eager. Off by default: docs/performance.md says where it pays.
        nonfinite_policy: what a NaN or infinite task loss (or gradient) does: ``"skip"`` the
            step (the weights are left untouched; counted and logged as
            ``train/mtl/skipped_steps``) or ``"stop"`` the run with a one-line error (the
            checkpoints already written are kept). Under 16-mixed, infinite gradients are the
            loss scaler's business and are not counted.
        max_consecutive_skips: with ``"skip"``, stop anyway after this many skipped steps in
            a row (a diverged run should not spin).
        baselines: single-task baseline values ``{task: {metric: value}}`` (validation
            values: model selection never looks at test). With them, ``val/mtl/delta_m`` and
            ``test/mtl/delta_m`` are logged (percent; see :mod:`mtl_lightning.metrics`), and
            ``--checkpoint.monitor val/mtl/delta_m`` selects on it.
        validation_losses: also compute each task's loss on validation and test batches
            (``val/<task>/loss``, ``val/mtl/loss``). The default checkpoint and early stopping
            select on ``val/mtl/score``, a metric, so ``false`` changes no selection and
            saves the losses' share of a validation epoch (detection's loss is its costliest
            part, docs/performance.md); keep it ``true`` to monitor or plot a validation loss.
    """

    def __init__(
        self,
        tasks: dict[str, dict[str, Any] | None] | None = None,
        task_info: dict[str, dict[str, Any]] | None = None,
        task_options: dict[str, dict[str, Any] | None] | None = None,
        backbone: str = "resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        drop_path_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int | None = None,
        vit_blocks: list[int] | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        neck_channels: int = 96,
        architecture: str = "hard",
        architecture_options: dict[str, Any] | None = None,
        balancer: Balancer | None = None,
        lr: float = 2e-3,
        backbone_lr_ratio: float = 1.0,
        layer_decay: float | None = None,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.01,
        train_metrics: bool = True,
        train_metrics_every: int = 10,
        channels_last: bool = False,
        compile: bool = False,
        nonfinite_policy: Literal["skip", "stop"] = "skip",
        max_consecutive_skips: int = 20,
        baselines: dict[str, dict[str, float]] | None = None,
        validation_losses: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["balancer"])
        task_info = task_info or {}
        tasks = trained_tasks(tasks, task_info, task_options)

        def make_backbone() -> Backbone:
            return Backbone(
                backbone, pretrained=pretrained, pretrained_file=pretrained_file,
                drop_path_rate=drop_path_rate, image_size=image_size, vit_blocks=vit_blocks,
                model_kwargs=backbone_kwargs,
            )

        self.tasks = nn.ModuleDict({
            name: build_task(name, options, task_info.get(name), labelled=list(task_info),
                             task_info=task_info)
            for name, options in tasks.items()
        })
        self.architecture = build_architecture(
            architecture, list(tasks), make_backbone, neck_channels, architecture_options,
            pyramid_levels={name: task.pyramid_levels for name, task in self.tasks.items()})
        for task in self.tasks.values():
            task.build_head(neck_channels, self.architecture.channels, self.architecture.strides)
        self.architecture.bind_tasks(self.tasks)  # PAD-Net, MTI-Net: their initial heads
        data_config = next(m for m in self.architecture.modules()
                           if isinstance(m, Backbone)).data_config
        self.normalize = InputNormalization(image_mean or data_config["mean"],
                                            image_std or data_config["std"])
        # What was used, for the checkpoint's hyper-parameters (the buffers are the truth).
        self.hparams.image_mean = self.normalize.mean.flatten().tolist()
        self.hparams.image_std = self.normalize.std.flatten().tolist()
        #: the resize interpolation the backbone was pretrained with (timm's data config);
        #: informative: the data pipeline resizes bilinearly with antialiasing
        self.image_interpolation: str = data_config.get("interpolation", "bilinear")
        if backbone_lr_ratio <= 0 or (layer_decay is not None and not 0 < layer_decay <= 1):
            raise ValueError(f"model.backbone_lr_ratio ({backbone_lr_ratio}) must be positive "
                             f"and model.layer_decay ({layer_decay}) in (0, 1].")
        for task_name, path in getattr(self.architecture, "members", {}).items():
            # An ensemble member trained on its own: its backbone, neck and head.
            self.load_state_dict(self.architecture.member_state(task_name, path), strict=False)
        self.balancer = balancer if balancer is not None else StaticWeighting()
        if not isinstance(self.balancer, (LossWeighting, GradientWeighting)):
            raise ValueError(
                f"model.balancer must be a LossWeighting or a GradientWeighting from "
                f"mtl_lightning.balancing, got {type(self.balancer).__name__}."
            )
        self.balancer.bind(list(self.tasks))
        if (isinstance(self.balancer, GradientWeighting) and self.balancer.source ==
                "representation" and not self.architecture.shares_representation):
            raise ValueError(
                f"The {architecture} architecture shares no representation; give the balancer "
                f"source: parameters (e.g. --model.balancer.init_args.source parameters)."
            )
        for name, task in self.tasks.items():
            if task.source and task_info and task.source not in task_info:
                raise ValueError(
                    f"Task '{name}' derives its targets from {task.source} labels, which "
                    f"the data does not provide (it labels {sorted(task_info)}); remove {name} "
                    f"or use data with {task.derived_from} labels."
                )
        unknown_baselines = set(baselines or {}) - set(self.tasks)
        if unknown_baselines:
            raise ValueError(f"model.baselines name tasks that are not trained: "
                             f"{sorted(unknown_baselines)}; tasks are {sorted(self.tasks)}.")
        static = self.balancer.weights if isinstance(self.balancer, StaticWeighting) else {}
        unknown = set(static) - set(self.tasks)
        if unknown:
            raise ValueError(
                f"Balancer weights name tasks that are not trained: {sorted(unknown)}; "
                f"tasks are {sorted(self.tasks)}."
            )
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": task.build_metrics(stage)
            for stage in STAGES for name, task in self.tasks.items()
            if stage != "train" or (train_metrics and task.metrics_on_train)
        })
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.architecture.compile()
            for task in self.tasks.values():
                task.compile()
        # The one piece of step state kept between hooks (see ``training_step``).
        self._awaiting_backward: AwaitingBackward | None = None
        if nonfinite_policy not in ("skip", "stop"):
            raise ValueError(
                f"model.nonfinite_policy must be 'skip' or 'stop', got {nonfinite_policy!r}."
            )
        self.skipped_steps = 0
        self._consecutive_skips = 0

    # ---------------------------------------------------------------- forward
    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """Raw outputs of every task head for a batch of images in [0, 1] (normalised here
        with the backbone's statistics)."""
        return self.run_network(image)[0]

    def run_network(self, image: torch.Tensor) -> tuple[dict[str, Any], ArchitectureOutput]:
        """:meth:`forward`'s outputs, and what the architecture returned with the features
        the heads read: the representation a gradient balancer differentiates through and
        any deep-supervision predictions (a training step needs both)."""
        image = self.normalize(image)
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        shared = self.architecture(image)
        size = (image.shape[-2], image.shape[-1])
        outputs = {name: task(shared.features[name], size) for name, task in self.tasks.items()}
        return outputs, shared

    def predict_tasks(self, image: torch.Tensor) -> list[dict[str, Any]]:
        """Post-processed predictions, one dict ``{task: prediction}`` per image."""
        outputs = self(image)
        per_task = {name: self.tasks[name].postprocess(out) for name, out in outputs.items()}
        return [{name: preds[i] for name, preds in per_task.items()} for i in range(len(image))]

    # ------------------------------------------------------------------ steps
    def _task_losses(
        self, batch: Batch, stage: str, update_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each task's loss (mean over its labelled samples) and its labelled-sample count;
        metrics are updated on the way."""
        losses, counts, _ = self._losses_and_representation(batch, stage, update_metrics)
        return losses, counts

    def _losses_and_representation(
        self, batch: Batch, stage: str, update_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
        """:meth:`_task_losses`, and the representation of the same forward pass (what a
        gradient balancer differentiates through). A task's loss includes its deep
        supervision (``weight * loss`` of each extra prediction the architecture made)."""
        outputs, shared = self.run_network(batch["image"])
        losses: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for name, task in self.tasks.items():
            has, target = self.task_labels(batch, name)
            losses[name] = task.loss(outputs[name], target, has)
            for weight, initial in shared.deep_supervision.get(name, ()):
                losses[name] = losses[name] + weight * task.loss(initial, target, has)
            counts[name] = has.sum()
            key = f"{stage}_{name}"
            if key in self.metrics and update_metrics:
                task.update_metrics(self.metrics[key], outputs[name], target, has)
        return losses, counts, shared.representation

    def _evaluate(self, batch: Batch, stage: str) -> dict[str, Any]:
        """Validation and test: one forward pass, every task's metric update and, with
        ``validation_losses``, its loss (the ``mtl`` loss logged is the plain sum).

        Returns ``{"outputs": raw head outputs}`` (``{task: logits or maps}``, batch first):
        callbacks read them in ``on_validation_batch_end`` (the prediction overlays draw
        their images from them) instead of running the model again. Lightning keeps no
        step outputs after that hook, so nothing accumulates over the epoch.
        """
        outputs = self(batch["image"])
        size = len(batch["image"])
        losses: list[torch.Tensor] = []
        for name, task in self.tasks.items():
            has, target = self.task_labels(batch, name)
            key = f"{stage}_{name}"
            if key in self.metrics:
                task.update_metrics(self.metrics[key], outputs[name], target, has)
            if not self.hparams.get("validation_losses", True):
                continue
            loss = task.loss(outputs[name], target, has)  # no deep supervision in eval mode
            losses.append(loss)
            if bool(has.any()):
                self.log(f"{stage}/{name}/loss", loss.detach(), on_epoch=True, batch_size=size,
                         sync_dist=True)
        if losses:
            self.log(f"{stage}/mtl/loss", sum(losses).detach(), on_epoch=True, prog_bar=True,
                     batch_size=size, sync_dist=True)  # the mean over processes under DDP
        return {"outputs": outputs}

    def task_labels(self, batch: Batch, name: str) -> tuple[torch.Tensor, Any]:
        """Which samples are labelled for task ``name``, and its targets; an auxiliary task
        derives them from its source task's labels."""
        source = self.tasks[name].source
        if source is None:
            return self._has(batch, name), batch["targets"].get(name)
        if source not in batch["targets"]:
            return self._has(batch, source), None
        return self._has(batch, source), self.tasks[name].derive_targets(batch["targets"][source])

    def _has(self, batch: Batch, name: str) -> torch.Tensor:
        has = batch.get("has", {}).get(name)
        if has is None or name not in batch["targets"]:
            return torch.zeros(len(batch["image"]), dtype=torch.bool, device=self.device)
        return has

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:
        """One training step, as Lightning runs it (automatic optimisation):

        1. here: the forward pass gives each task's loss on this process, its labelled count
           and the representation the architecture returned; the losses are made global
           (:class:`~mtl_lightning.balancing.TaskLosses`, one all-reduce under DDP);
        2. here: no labelled sample anywhere, or a non-finite loss: no update (returns
           ``None``; ``nonfinite_policy`` says whether the run goes on);
        3. here: balance. A loss weighting combines the losses into the loss Lightning
           back-propagates. A gradient weighting's update needs each task's gradient: the
           losses wait for :meth:`backward`, where the balancer writes the gradients;
        4. :meth:`backward` (with the loss Lightning scaled), :meth:`on_before_optimizer_step`
           (a non-finite gradient skips the step), clipping and the optimizer step;
        5. :meth:`on_train_batch_end` logs the step's record and calls the balancer's
           ``after_optimizer_step``.

        Returns ``{"loss": ..., "balancing": BalancingRecord}``; Lightning passes the dict on
        to every ``on_train_batch_end`` hook as ``outputs`` (the gradient-conflict heatmap
        reads the statistics there).
        """
        every = max(1, int(self.hparams.get("train_metrics_every", 1)))
        local, counts, representation = self._losses_and_representation(
            batch, "train", update_metrics=batch_idx % every == 0)
        losses = TaskLosses.gather(local, counts)  # global values; one all-reduce under DDP
        size = len(batch["image"])
        if not losses.tasks:
            # Partial labels: no sample of the global batch is labelled for any task. Nothing
            # to learn from; skipping is decided alike on every process (the counts are global).
            return None
        bad = [t for t, v in losses.values.items() if not bool(torch.isfinite(v))]
        if bad:  # the same on every process: the values are global
            name = bad[0]
            return self._skip_step(
                f"non-finite {name} loss ({float(losses.values[name])}) at step "
                f"{self.global_step}"
            )
        self._consecutive_skips = 0
        for name, value in losses.values.items():
            self.log(f"train/{name}/loss", value, on_step=True, batch_size=size)
        step = self.global_step
        record = BalancingRecord()
        if isinstance(self.balancer, GradientWeighting):
            # The one hand-off Lightning forces: it zeroes the gradients *after*
            # training_step and gives ``backward`` only the loss, so the gradient weighting
            # runs in ``backward`` and the task losses wait in this attribute until then.
            self._awaiting_backward = AwaitingBackward(losses, representation, record)
            loss = sum(losses.share[t] * losses.local[t] for t in losses.tasks)
            value = loss.detach()
        else:
            combination = self.balancer.combine(losses, step)
            loss, value = combination.loss, combination.value
            record.weights = dict(combination.weights)
            if self.balancer.wants_statistics(step):
                record.statistics = self._statistics(losses, representation)
        self.log("train/mtl/loss", value, on_step=True, prog_bar=True, batch_size=size)
        return {"loss": loss, "balancing": record}

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward hook. ``loss`` arrives divided by the accumulation factor and
        multiplied by the loss scale (16-mixed). A loss weighting back-propagates it; a
        gradient weighting runs its own backward (``GradientWeighting.backward``, see
        :mod:`mtl_lightning.balancing.gradient_weighting`) with the same factor, so that
        unscaling, clipping and accumulation work as usual, and completes the step's record
        with the weights."""
        awaiting, self._awaiting_backward = self._awaiting_backward, None
        if awaiting is None:
            super().backward(loss, *args, **kwargs)
            return
        assert isinstance(self.balancer, GradientWeighting)  # only such steps wait
        scale = self._loss_scale() / self.trainer.accumulate_grad_batches
        done = self.balancer.backward(awaiting.losses,
                                      self._shared_structure(awaiting.representation),
                                      scale, self.global_step)
        awaiting.record.weights, awaiting.record.statistics = done.weights, done.statistics

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Gradients that are not finite (with a finite loss) never reach the weights: the
        step is skipped by clearing them (the optimizer then leaves every weight alone)."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # 16-mixed: the loss scaler skips such steps and lowers its scale
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack(torch._foreach_norm(grads))  # one fused kernel, not one per tensor
        if bool(torch.isfinite(norms).all()):
            return
        self._skip_step(f"non-finite gradient at step {self.global_step}")
        for param in self.parameters():
            param.grad = None

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """After the optimizer step: log the step's balancing record (``train/mtl/...``) and
        give the balancer its ``after_optimizer_step`` (FAMO's same-batch update), with the
        batch's losses recomputed only if it asks for them."""
        if not outputs:
            return  # training_step took no step (nothing labelled, a non-finite loss)
        for key, value in outputs["balancing"].scalars().items():
            self.log(f"train/mtl/{key}", value, on_step=True, batch_size=len(batch["image"]))
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:  # the optimizer stepped
            self.balancer.after_optimizer_step(lambda: self._losses_after_step(batch))

    def _losses_after_step(self, batch: Batch) -> TaskLosses:
        """The batch's global task losses under the weights the step just updated."""
        with torch.no_grad():
            local, counts = self._task_losses(batch, "after_step")
        return TaskLosses.gather(local, counts)

    def _skip_step(self, reason: str) -> None:
        """Apply ``nonfinite_policy`` to a step that must not reach the weights."""
        hint = ("lower model.lr, keep trainer.gradient_clip_val, or try precision 32-true; "
                "resume from the last checkpoint with --ckpt_path")
        if self.hparams.nonfinite_policy == "stop":
            raise NonFiniteLossError(f"Stopped: {reason}; {hint}.")
        self.skipped_steps += 1
        self._consecutive_skips += 1
        self._awaiting_backward = None
        self.log("train/mtl/skipped_steps", float(self.skipped_steps), on_step=True)
        if self._consecutive_skips > self.hparams.max_consecutive_skips:
            raise NonFiniteLossError(
                f"Stopped after {self._consecutive_skips} skipped steps in a row: {reason}; {hint}."
            )
        rank_zero_warn(f"Skipped the step: {reason} (model.nonfinite_policy=skip).")
        return None

    def _statistics(self, losses: TaskLosses,
                    representation: list[torch.Tensor]) -> GradientStatistics:
        """Gradient statistics on a loss-weighting step (one extra backward per task through
        the layers above the trunk; the graph is kept for Lightning's backward)."""
        source = "representation" if self.architecture.shares_representation else "parameters"
        gradients = compute_task_gradients(losses, self._shared_structure(representation),
                                           source, self._loss_scale(), retain_graph=True)
        return GradientStatistics.of(gradients)

    def _loss_scale(self) -> float:
        """The 16-mixed loss scale Lightning's precision plugin applies (1 otherwise)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _shared_structure(self, representation: list[torch.Tensor]) -> SharedStructure:
        """Which tensors are the ``representation`` (of a forward pass), which parameters the
        trunk, which are shared above it, and which belong to one task (see
        :mod:`mtl_lightning.balancing.task_gradients`)."""
        roles = self.architecture.roles()
        return SharedStructure(
            representation=representation,
            trunk=roles.trunk,
            shared=roles.shared,
            task_parameters={name: list(task.parameters()) + roles.per_task.get(name, [])
                             for name, task in self.tasks.items()},
        )

    @property
    def backbone(self) -> Backbone:
        """The shared backbone (hard sharing and MTAN)."""
        return self.architecture.backbone

    @property
    def neck(self) -> nn.Module:
        """The shared neck (hard sharing and MTAN)."""
        return self.architecture.neck

    def on_train_start(self) -> None:
        """A gradient weighting averages the task gradients over processes itself (before
        weighting them): DDP's own all-reduce of the combined gradient is switched off."""
        model = self.trainer.strategy.model
        if isinstance(self.balancer, GradientWeighting) and hasattr(
            model, "require_backward_grad_sync"
        ):
            model.require_backward_grad_sync = False

    def validation_step(self, batch: Batch, batch_idx: int,
                        dataloader_idx: int = 0) -> dict[str, Any]:
        """Metrics (and losses) of a validation batch; returns its raw outputs for the
        callbacks (see :meth:`_evaluate`)."""
        # Several validation loaders (one per data source) share the same metrics: each
        # sample updates only the tasks it is labelled for.
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """Predictions mapped back to each image's original pixels, with its metadata.

        ``meta["content_size"]`` (written by the evaluation transforms) is the top-left part
        of the input that holds the image (all of it unless the data letterboxes); each
        task's ``resize_prediction`` maps that part onto ``meta["orig_size"]``. A sample the
        loader could not read (``meta["error"]``) is passed on without predictions, so the
        writer can list it.
        """
        predictions = self.predict_tasks(batch["image"])
        input_size = tuple(batch["image"].shape[-2:])
        results = []
        for meta, prediction in zip(batch["meta"], predictions):
            if "error" in meta:
                results.append({"meta": meta, "predictions": {}})
                continue
            original = tuple(meta["orig_size"])
            content = tuple(meta.get("content_size", input_size))
            resized = {
                name: self.tasks[name].resize_prediction(pred, content, original)
                for name, pred in prediction.items()
            }
            results.append({"meta": meta, "predictions": resized})
        return results

    # ------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint made for other tasks, another backbone or other class lists is refused
        with one sentence naming the difference, before a long state-dict key error."""
        fill_legacy_statistics(checkpoint.get("state_dict") or {})
        saved = checkpoint.get("hyper_parameters") or {}
        if not saved:
            return
        problems = checkpoint_mismatch(saved, dict(self.hparams))
        if problems:
            raise CheckpointMismatchError(
                "The checkpoint does not fit this model: " + "; ".join(problems)
                + ". Use the config the checkpoint was trained with (its run's config.yaml)."
            )

    # ---------------------------------------------------------------- metrics
    def on_train_epoch_end(self) -> None:
        self.balancer.on_train_epoch_end()
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        """Compute each task's metrics (torchmetrics syncs them across processes) and log
        ``{stage}/{task}/{metric}`` plus ``{stage}/mtl/score``, the mean headline metric."""
        headline: list[float] = []
        computed: dict[str, dict[str, float]] = {}
        for name, task in self.tasks.items():
            key = f"{stage}_{name}"
            if key not in self.metrics or not self._updated_anywhere(self.metrics[key]):
                continue
            values = task.compute_metrics(self.metrics[key])
            self.metrics[key].reset()
            for metric, value in values.items():
                self.log(f"{stage}/{name}/{metric}", value.float(), sync_dist=False)
            computed[name] = {m: float(v) for m, v in values.items() if v.numel() == 1}
            if task.headline_metric in values and not task.auxiliary:
                headline.append(computed[name][task.headline_metric])
        if headline and stage != "train":
            # Python floats: the tasks' metrics live on different devices on a GPU (COCO mAP
            # is computed on the CPU, mIoU on the GPU)
            self.log(f"{stage}/mtl/score", sum(headline) / len(headline), sync_dist=False)
        if self.hparams.baselines and stage != "train":
            self._log_delta_m(stage, computed)

    def computed_metric(self, stage: str, task: str, metric: str) -> torch.Tensor | None:
        """This epoch's value of one metric of a task, e.g. the classification confusion
        matrix (a value that is not logged), summed or reduced across processes;
        ``None`` when the task has no such metric or no process updated it. Every process
        must call it (computing syncs), before ``on_{stage}_epoch_end`` resets the metrics."""
        key = f"{stage}_{task}"
        if key not in self.metrics or metric not in self.metrics[key]:
            return None
        chosen = self.metrics[key][metric]
        if not self._updated_anywhere({metric: chosen}):
            return None
        return chosen.compute()

    def _updated_anywhere(self, metrics: Any) -> bool:
        """Whether any process updated ``metrics`` this epoch. Computing syncs the metric
        across processes, so every process must make the same choice: with partial labels
        (and training metrics on a sample of batches) one process may have seen no
        labelled sample of a task while another has."""
        updated = any(metric.update_called for metric in metrics.values())
        if self._trainer is None or self.trainer.world_size == 1:
            return updated
        flag = torch.tensor(float(updated), device=self.device)
        return bool(self.trainer.strategy.reduce(flag, reduce_op="sum") > 0)

    def lower_is_better(self) -> dict[str, list[str]]:
        """Each task's metric names where lower is better, as its metrics declare it
        (torchmetrics' ``higher_is_better``), and its loss; ``run.json`` records it."""
        return {name: sorted(lower_is_better_of(self.tasks[name].build_metrics("val"))
                             | {"loss"})
                for name in self.tasks}

    def _log_delta_m(self, stage: str, computed: dict[str, dict[str, float]]) -> None:
        """``{stage}/mtl/delta_m`` against ``model.baselines`` (Maninis et al. 2019), over the
        baseline metrics this epoch computed; checkpoint selection may monitor it."""
        results = {
            task: {m: computed[task][m] for m in metrics if m in computed.get(task, {})}
            for task, metrics in self.hparams.baselines.items()
        }
        results = {task: values for task, values in results.items() if values}
        if results:
            value = delta_m(results, self.hparams.baselines, self.lower_is_better())
            self.log(f"{stage}/mtl/delta_m", torch.tensor(value), sync_dist=False)

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no decay on norms and biases; the backbone's rate scaled by
        ``backbone_lr_ratio`` and ``layer_decay``) with linear warm-up and cosine decay, per
        step."""
        hp = self.hparams
        groups = optimizer_param_groups(self, hp.weight_decay, hp.get("layer_decay"),
                                        hp.get("backbone_lr_ratio", 1.0))
        optimizer = create_optimizer_v2(groups, opt="adamw", lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(total * hp.warmup_fraction)
        if hp.warmup_steps is not None:
            warmup = min(hp.warmup_steps, total)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=total, lr_min=hp.lr * hp.min_lr_ratio, warmup_t=warmup,
            warmup_lr_init=hp.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """timm schedulers are stepped by update count, not by epoch."""
        scheduler.step_update(num_updates=self.global_step)
