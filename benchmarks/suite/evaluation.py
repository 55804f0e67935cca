"""What evaluating costs beyond the network: ``eval_overhead``.

A validation epoch through Lightning (``trainer.validate`` with the config's callbacks and
logger: the loader, forward, losses, every task's metric update, the final mIoU, accuracy
and COCO mAP compute, logging, overlays) over the forward passes alone of the same
batches, held in memory, under ``torch.inference_mode`` and the config's autocast. The
epoch is timed from ``on_validation_start`` to ``on_validation_end``: the loader's workers
start before it, as they do once per fit with persistent workers. The model is freshly
initialised: a trained one finds more objects, so detection's post-processing and COCO mAP
cost it somewhat more (mAP's compute was 0.03 s of the epoch here).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from mtl_lightning.callbacks.prediction_overlays import PredictionOverlays

from .common import autocast_for, batches_in_memory, build_cli, spread, synchronize
from .settings import Settings
from .validation_breakdown import validation_breakdown

TARGET = 1.3


class ValidationTimer(Callback):
    """Wall time of each validation run, from its start hook to its end hook."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def on_validation_start(self, *args: Any) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_validation_end(self, *args: Any) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


def forward_seconds(model: Any, batches: list[dict], precision: str, device: str) -> float:
    model.to(device).eval()  # ``trainer.validate`` hands the model back on the CPU
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(precision, device):
        for batch in batches:
            model(batch["image"])
    synchronize(device)
    return time.perf_counter() - start


def eval_overhead(settings: Settings, device: str, config: Path,
                  args: list[str]) -> dict[str, Any]:
    """The ratio, and the overlays' share of it: each round also validates with the
    prediction overlays switched off (``ratio_without_overlays``), since drawing, PNG
    files and W&B images are a logging choice rather than evaluation. One more epoch,
    with timers, says where the time goes (``breakdown_s``, suite/validation_breakdown.py)."""
    cli = build_cli(*args, config=config, device=device, logger=True)
    cli.datamodule.setup("validate")
    precision = str(cli.config.trainer.precision)
    batches = batches_in_memory(cli.datamodule.val_dataloader(), 10**6, device)
    timer = ValidationTimer(device)
    cli.trainer.callbacks.append(timer)
    overlays = [c for c in cli.trainer.callbacks if isinstance(c, PredictionOverlays)]
    shown = [c.num_images for c in overlays]

    def validate(with_overlays: bool) -> float:
        for callback, count in zip(overlays, shown):
            callback.num_images = count if with_overlays else 0
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        return timer.seconds[-1]

    validate(True)  # warm-up
    forward_seconds(cli.model, batches, precision, device)
    seconds: dict[str, list[float]] = {"epoch": [], "without_overlays": [], "forward": []}
    for round_index in range(settings.rounds):
        order = ["epoch", "without_overlays", "forward"]
        if round_index % 2:
            order.reverse()
        for side in order:
            seconds[side].append(
                forward_seconds(cli.model, batches, precision, device) if side == "forward"
                else validate(side == "epoch"))
    for callback, count in zip(overlays, shown):
        callback.num_images = count
    breakdown = validation_breakdown(cli.trainer, cli.model, cli.datamodule,
                                     lambda: timer.seconds[-1])
    ratios = [e / f for e, f in zip(seconds["epoch"], seconds["forward"])]
    without = [e / f for e, f in zip(seconds["without_overlays"], seconds["forward"])]
    return {"ratio": spread(ratios), "ratio_without_overlays": spread(without),
            "epoch_s": spread(seconds["epoch"]),
            "epoch_without_overlays_s": spread(seconds["without_overlays"]),
            "forward_s": spread(seconds["forward"]), "target": TARGET,
            "breakdown_s": breakdown,
            "images": sum(len(b["image"]) for b in batches)}
