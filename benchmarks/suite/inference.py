"""Why share a backbone at all: ``mtl_vs_single_inference_speedup``.

Images/s of the multi-task model (one backbone and neck, three heads, post-processing
included: ``predict_tasks``) over images/s of the three single-task models of
``configs/experiment/single_<task>.yaml`` run one after another on the same images, i.e.
the sum of the three single-task times over the multi-task time. Eval mode,
``torch.inference_mode``, the config's autocast, one evaluation batch of real images.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from .common import REPO, autocast_for, batches_in_memory, build_cli, spread, time_calls
from .settings import Settings

TARGET = 2.5
TASKS = ("classification", "segmentation", "detection")


def predictor(model: Any, precision: str, device: str) -> Any:
    model = model.to(device).eval()

    def predict(image: torch.Tensor) -> None:
        with torch.inference_mode(), autocast_for(precision, device):
            model.predict_tasks(image)

    return predict


def mtl_vs_single_inference(settings: Settings, device: str, config: Path,
                            args: list[str]) -> dict[str, Any]:
    mtl = build_cli(*args, config=config, device=device)
    precision = str(mtl.config.trainer.precision)
    image = batches_in_memory(mtl.datamodule.val_dataloader(), 1, device)[0]["image"]
    models = {"mtl": predictor(mtl.model, precision, device)}
    for task in TASKS:
        single = REPO / "configs" / "experiment" / f"single_{task}.yaml"
        models[task] = predictor(build_cli(*args, "--config", str(single), config=config,
                                           device=device).model, precision, device)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    ratios = []
    for round_index in range(settings.rounds):
        names = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in names:
            times = time_calls(lambda _, name=name: models[name](image), settings.steps,
                               settings.warmup, device)
            seconds[name].append(statistics.median(times))
        ratios.append(sum(seconds[t][-1] for t in TASKS) / seconds["mtl"][-1])
    size = len(image)
    return {
        "ratio": spread(ratios), "batch_size": size, "target": TARGET,
        "images_per_s": {name: spread([size / s for s in values])
                         for name, values in seconds.items()},
    }
