"""Peers side by side: our Lightning training step against LibMTL's trainer step.

``peer_libmtl_step`` times, in one process, on the same model and the same in-memory batches
of the dense Scenes tasks (segmentation, depth, surface normals; ``configs/experiment/
dense.yaml`` restricted to them, the tasks LibMTL's tensor labels can carry), per weighting:

- **ours**: a step of the real Lightning fit (suite/overheads.py's ``in_memory`` side: the
  module's forward, losses, balancer, backward, clipping, AdamW, scheduler, training
  metrics, the configured logger) with our balancer ``equal`` or ``pcgrad`` (parameter
  source);
- **theirs**: one iteration of the body of ``LibMTL.Trainer.train`` (LibMTL 1.1.5, Lin &
  Zhang 2023, "LibMTL: A Python Library for Multi-Task Learning", JMLR): its ``HPS``
  model's forward, ``process_preds``, ``_compute_loss`` (one ``AbsLoss`` per task, which
  records ``loss.item()``), the meter's metric update, ``zero_grad``, the weighting's
  ``backward`` (``EW`` or ``PCGrad``) and Adam's step. The encoder is our backbone and neck,
  the decoders our task heads, the losses and metrics our tasks' own, so the only
  difference is the trainer around them.

LibMTL's ``Trainer.train`` cannot be called as it is: ``__init__`` hard-codes ``cuda:0`` and
``_process_data`` calls the DataLoader iterator's ``.next()``, removed from PyTorch; so the
trainer is built on the CPU (:class:`CpuTrainer`) and its step driven method by method.
LibMTL 1.1.5 also imports ``torchvision.models.utils``, removed from torchvision 0.13: a
stand-in module re-exporting ``torch.hub.load_state_dict_from_url`` is registered first.
Both sides run under the config's autocast. LibMTL is a benchmarks-only optional dependency
(``pip install --no-deps LibMTL==1.1.5``); without it the key records why it did not run.

Before timing, both sides' task losses are computed from the same weights on the same batch
(``max_abs_loss_difference``), so that the ratio compares equal work. The ratio is ours /
theirs per round (rounds alternate which side goes first); target ``<= 1.0``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mtl_lightning.module import MultiTaskModule

from .common import REPO, autocast_for, batches_in_memory, build_cli, spread, time_calls
from .overheads import lightning_step_times
from .settings import Settings

TARGET = 1.0
DENSE_TASKS = ("segmentation", "depth", "normals")
DENSE = REPO / "configs" / "experiment" / "dense.yaml"
BALANCERS = REPO / "configs" / "balancer"
#: our balancer config -> LibMTL's weighting of the same method
WEIGHTINGS = {"equal": "EW", "pcgrad": "PCGrad"}


def import_libmtl() -> types.ModuleType:
    """LibMTL, importable on today's torchvision (see the module docstring)."""
    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore
        sys.modules["torchvision.models.utils"] = shim
    import LibMTL

    return LibMTL


def libmtl_missing() -> str | None:
    """Why LibMTL cannot be used here, or None."""
    try:
        import_libmtl()
    except ImportError as error:
        return (f"LibMTL is not importable ({error}); install it with "
                "'pip install --no-deps LibMTL==1.1.5' (benchmarks only)")
    return None


class Encoder(nn.Module):
    """Our input normalisation and architecture (backbone and neck) as LibMTL's shared
    encoder: the batch of images to the task name -> features mapping our heads read, as
    :meth:`MultiTaskModule.forward` computes it."""

    def __init__(self, model: MultiTaskModule) -> None:
        super().__init__()
        self.normalize, self.architecture = model.normalize, model.architecture
        self.channels_last = bool(model.hparams.channels_last)

    def forward(self, images: torch.Tensor) -> Any:
        images = self.normalize(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.architecture(images).features


class Decoder(nn.Module):
    """One of our task heads as a LibMTL decoder (it reads its task's features)."""

    def __init__(self, name: str, task: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.name, self.task, self.image_size = name, task, image_size

    def forward(self, features: Any) -> torch.Tensor:
        return self.task(features[self.name], self.image_size)


def task_dict(libmtl: types.ModuleType, model: MultiTaskModule) -> dict[str, dict[str, Any]]:
    """LibMTL's ``task_dict``: each task's loss and metric are our task's own, labels arrive
    as ``(target, has)``."""

    class TaskLoss(libmtl.loss.AbsLoss):
        def __init__(self, task: Any) -> None:
            super().__init__()
            self.task = task

        def compute_loss(self, pred: torch.Tensor, gt: tuple) -> torch.Tensor:
            target, has = gt
            return self.task.loss(pred, target, has)

    class TaskMetric(libmtl.metrics.AbsMetric):
        def __init__(self, task: Any) -> None:
            super().__init__()
            self.task, self.metrics = task, task.build_metrics("train")

        def update_fun(self, pred: torch.Tensor, gt: tuple) -> None:
            target, has = gt
            self.task.update_metrics(self.metrics, pred, target, has)

        def score_fun(self) -> list[float]:
            return [float(v) for v in self.metrics.compute().values()]

    return {name: {"metrics": [task.headline_metric], "metrics_fn": TaskMetric(task),
                   "loss_fn": TaskLoss(task), "weight": [1]}
            for name, task in model.tasks.items()}


def cpu_trainer(libmtl: types.ModuleType, model: MultiTaskModule, weighting: str,
                image_size: tuple[int, int]) -> Any:
    """A ``LibMTL.Trainer`` on the CPU: its own ``_prepare_model``, ``_prepare_optimizer`` and
    performance meter, without the ``cuda:0`` its ``__init__`` hard-codes."""

    class CpuTrainer(libmtl.Trainer):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.device = torch.device("cpu")
            self.kwargs = {"weight_args": {}, "arch_args": {}}
            self.task_dict = task_dict(libmtl, model)
            self.task_num, self.task_name = len(self.task_dict), list(self.task_dict)
            self.rep_grad, self.multi_input = False, False
            decoders = nn.ModuleDict({name: Decoder(name, task, image_size)
                                      for name, task in model.tasks.items()})
            with contextlib.redirect_stdout(io.StringIO()):  # LibMTL prints banners
                self._prepare_model(getattr(libmtl.weighting, weighting), libmtl.architecture.HPS,
                                    lambda: Encoder(model), decoders)
                self._prepare_optimizer({"optim": "adam", "lr": model.hparams.lr,
                                         "weight_decay": model.hparams.weight_decay}, None)
                self.meter = libmtl._record._PerformanceMeter(self.task_dict, False)

    return CpuTrainer()


def labels(model: MultiTaskModule, batch: dict) -> dict[str, tuple]:
    return {name: tuple(reversed(model.task_labels(batch, name))) for name in model.tasks}


class TheirsStep:
    """One iteration of ``LibMTL.Trainer.train``'s loop body, on an in-memory batch.

    LibMTL 1.1.5 was written for PyTorch 1.x, whose ``zero_grad()`` zeroed gradients; since
    PyTorch 2.0 it drops them (``set_to_none=True``), and its gradient weightings then fail
    writing ``param.grad.data`` of a parameter without a gradient (``_reset_grad``). Its two
    ``zero_grad`` calls (the optimizer's here, the model's ``zero_grad_share_params``) are
    therefore made with ``set_to_none=False``, and every parameter starts with a zero
    gradient: the behaviour LibMTL was written against.
    """

    def __init__(self, trainer: Any, model: MultiTaskModule, precision: str,
                 device: str) -> None:
        self.trainer, self.model, self.precision, self.device = trainer, model, precision, device
        self.trainer.model.train()
        encoder = self.trainer.model.encoder
        self.trainer.model.zero_grad_share_params = lambda: encoder.zero_grad(set_to_none=False)
        for parameter in self.trainer.model.parameters():
            parameter.grad = torch.zeros_like(parameter)

    def losses(self, batch: dict) -> torch.Tensor:
        with autocast_for(self.precision, self.device):
            preds = self.trainer.process_preds(self.trainer.model(batch["image"]))
            gts = labels(self.model, batch)
            losses = self.trainer._compute_loss(preds, gts)
        self.trainer.meter.update(preds, gts)
        return losses

    def step(self, batch: dict) -> None:
        losses = self.losses(batch)
        self.trainer.optimizer.zero_grad(set_to_none=False)
        self.trainer.model.backward(losses, **self.trainer.kwargs["weight_args"])
        self.trainer.optimizer.step()


def dense_args(folder: Path) -> list[str]:
    """The dense Scenes tasks on a small set of their own (one default batch of 16)."""
    subset = folder / "dense_tasks.yaml"
    subset.write_text(yaml.safe_dump({"data": {"init_args": {"tasks": list(DENSE_TASKS)}}}))
    return ["--config", str(DENSE), "--config", str(subset),
            f"--data.init_args.root={folder / 'scenes'}", "--data.init_args.num_train=16",
            "--data.init_args.num_val=8", "--data.init_args.num_test=8",
            "--data.init_args.num_workers=0", "--data.init_args.generator_workers=0"]


def our_losses(model: MultiTaskModule, batch: dict, precision: str, device: str) -> list:
    with torch.no_grad(), autocast_for(precision, device):
        outputs = model(batch["image"])
        return [float(task.loss(outputs[name], *reversed(model.task_labels(batch, name))))
                for name, task in model.tasks.items()]


def measure_weighting(method: str, settings: Settings, device: str, config: Path,
                      args: list[str]) -> dict[str, Any]:
    """Ours / theirs for one balancer and LibMTL's weighting of the same method."""
    libmtl = import_libmtl()
    method_args = [*args, "--model.balancer", str(BALANCERS / f"{method}.yaml")]
    if method != "equal":
        # LibMTL's gradient methods flatten each gradient with ``.view(-1)``, which fails on
        # the channels-last weights of the default config: both sides run without them.
        method_args.append("--model.channels_last=false")
    cli = build_cli(*method_args, config=config, device=device)
    precision = str(cli.config.trainer.precision)
    batches = batches_in_memory(cli.datamodule.train_dataloader(),
                                settings.in_memory_batches, device)
    size = tuple(batches[0]["image"].shape[-2:])
    model = copy.deepcopy(cli.model).to(device)
    trainer = cpu_trainer(libmtl, model, WEIGHTINGS[method], size)
    theirs = TheirsStep(trainer, model, precision, device)
    with torch.no_grad():
        difference = max(abs(a - float(b)) for a, b in zip(
            our_losses(cli.model.to(device).train(), batches[0], precision, device),
            theirs.losses(batches[0])))
    ms: dict[str, list[float]] = {"ours": [], "theirs": []}
    ratios = []
    for round_index in range(settings.rounds):
        order = ["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]
        medians = {}
        for side in order:
            if side == "ours":
                times, _ = lightning_step_times(config, method_args, settings, device, batches)
            else:
                times = time_calls(lambda i: theirs.step(batches[i % len(batches)]),
                                   settings.steps, settings.warmup, device)
            medians[side] = statistics.median(times)
            ms[side].append(1e3 * medians[side])
        ratios.append(medians["ours"] / medians["theirs"])
    return {"ratio": spread(ratios), "ours_ms": spread(ms["ours"]),
            "theirs_ms": spread(ms["theirs"]), "libmtl_weighting": WEIGHTINGS[method],
            "max_abs_loss_difference": difference, "precision": precision,
            "channels_last": bool(cli.model.hparams.channels_last)}


def peer_libmtl_step(settings: Settings, device: str, config: Path,
                     args: list[str]) -> dict[str, Any]:
    """Per weighting, our Lightning step / LibMTL's trainer step (module docstring); the
    top-level ``ratio`` is equal weighting's (``EW``)."""
    missing = libmtl_missing()
    if missing:
        return {"skipped": missing, "target": TARGET}
    if device != "cpu":
        return {"skipped": "LibMTL's weightings build their gradient vectors on the CPU "
                "(AbsWeighting._grad2vec); measured on the CPU only", "target": TARGET}
    from importlib.metadata import version

    with tempfile.TemporaryDirectory(prefix="mtl-bench-libmtl-") as scratch:
        extra = [*args, *dense_args(Path(scratch))]
        methods: dict[str, Any] = {}
        for method in WEIGHTINGS:
            try:
                methods[method] = measure_weighting(method, settings, device, config, extra)
            except Exception as error:  # one method failing must not hide the other
                methods[method] = {"error": f"{type(error).__name__}: {error}"}
    result: dict[str, Any] = {"target": TARGET, "tasks": list(DENSE_TASKS),
                              "libmtl": version("LibMTL"), "methods": methods}
    if "ratio" in methods["equal"]:
        result["ratio"] = methods["equal"]["ratio"]
    else:
        result["error"] = f"equal weighting failed: {methods['equal'].get('error')}"
    return result


__all__ = ["libmtl_missing", "peer_libmtl_step"]
