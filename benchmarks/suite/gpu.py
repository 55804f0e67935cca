"""The GPU-only part of the suite (``gpu``; ``--device cuda``, under the GPU trainer file's
bf16-mixed):

- absolute training images/s of the plain step (:class:`~suite.plain_loop.PlainLoop`) for
  the default model at 128 px and for a full-width ResNet-50 (FPN of 128 channels) at
  512 px, each on a batch of the config's batch size; and
- ``gpu_busy_fraction``: the share of the default model's plain step in which the GPU runs
  something. The kernels' busy time per step (the union of the GPU events' intervals from
  ``torch.profiler``, overlaps counted once) is divided by the step's wall time measured
  *without* the profiler, whose own host cost would otherwise make the GPU look idle.
  What is left is the host: Python, kernel launches, synchronisation. Where the suite's
  ``train_step_overhead`` ran first, ``gpu_busy_fraction_lightning`` divides the same
  kernel time by the real Lightning step (loader, logging and metrics included).

The throughput part runs on any device (the tests run it on the CPU); the busy fraction
needs CUDA.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from .common import batches_in_memory, build_cli, spread, time_calls
from .plain_loop import PlainLoop
from .scaling import small_data
from .settings import Settings

RESNET50_512 = ["--model.backbone=resnet50", "--model.backbone_kwargs=null",
                "--model.neck_channels=128", "--data.init_args.image_size=512"]
VARIANTS = {"default_128px": [], "resnet50_512px": RESNET50_512}


def merged_busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (overlapping ones counted once)."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def kernel_busy_seconds(prof: Any) -> float:
    """Seconds in which at least one GPU activity (kernel, copy, memset) ran."""
    return merged_busy_seconds([
        (event.time_range.start, event.time_range.end) for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    ]) / 1e6


def kernel_seconds_per_step(loop: PlainLoop, batch: dict, steps: int) -> float:
    """GPU busy seconds per plain step, from ``torch.profiler`` over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        loop.step(batch)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            loop.step(batch)
        torch.cuda.synchronize()
    return kernel_busy_seconds(prof) / steps


def throughput(settings: Settings, config: Path, args: list[str], device: str,
               scratch: Path) -> dict[str, tuple[PlainLoop, dict, list[float]]]:
    """Per variant: its plain loop, its batch, and each round's median step seconds."""
    measured = {}
    for name in settings.gpu_variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown GPU variant {name!r}; known: {list(VARIANTS)}")
        extra = VARIANTS[name]
        cli = build_cli(*args, *small_data(scratch / name), *extra, config=config,
                        device=device)
        batch = batches_in_memory(cli.datamodule.train_dataloader(), 1, device)[0]
        loop = PlainLoop(cli.model, str(cli.config.trainer.precision), device)
        medians = [statistics.median(time_calls(lambda _, loop=loop, batch=batch:
                                                loop.step(batch),
                                                settings.steps, settings.warmup, device))
                   for _ in range(settings.rounds)]
        measured[name] = (loop, batch, medians)
    return measured


def gpu_extras(settings: Settings, device: str, config: Path, args: list[str],
               lightning_step_ms: float | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="mtl-bench-gpu-") as scratch:
        measured = throughput(settings, config, args, device, Path(scratch))
        for name, (_, batch, medians) in measured.items():
            size = len(batch["image"])
            result[f"{name}_train_images_per_s"] = spread([size / s for s in medians])
            result[f"{name}_step_ms"] = spread([1e3 * s for s in medians])
            result[f"{name}_batch_size"] = size
        if device == "cuda" and "default_128px" in measured:
            loop, batch, medians = measured["default_128px"]
            kernel_s = kernel_seconds_per_step(loop, batch, settings.steps)
            result["kernel_ms_per_step"] = 1e3 * kernel_s
            result["gpu_busy_fraction"] = min(1.0, kernel_s / statistics.median(medians))
            if lightning_step_ms:
                result["gpu_busy_fraction_lightning"] = min(
                    1.0, 1e3 * kernel_s / lightning_step_ms)
    return result
