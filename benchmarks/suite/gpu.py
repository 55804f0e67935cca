"""The GPU-only part of the suite (``--device cuda``, under the GPU trainer file's bf16-mixed):

- absolute training images/s of the plain step for the default model at 128 px and for a
  full-width ResNet-50 (FPN of 128 channels) at 512 px, and
- ``gpu_busy_fraction``: the share of the default model's step time in which the GPU runs a
  kernel (the union of the kernels' intervals from ``torch.profiler`` over the wall time of
  the profiled steps). What is left is the host: Python, launches, synchronisation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .common import batches_in_memory, build_cli, spread, time_calls
from .plain_loop import PlainLoop
from .scaling import small_data
from .settings import Settings

RESNET50_512 = ["--model.backbone=resnet50", "--model.backbone_kwargs=null",
                "--model.neck_channels=128", "--data.init_args.image_size=512"]


def kernel_busy_seconds(prof: Any) -> float:
    """Seconds in which at least one GPU kernel ran (overlapping kernels counted once)."""
    intervals = sorted(
        (event.time_range.start, event.time_range.end) for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy_us, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop <= end:
            continue
        busy_us += stop - max(start, end)
        end = stop
    return busy_us / 1e6


def busy_fraction(loop: PlainLoop, batch: dict, steps: int) -> float:
    for _ in range(3):
        loop.step(batch)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            loop.step(batch)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return kernel_busy_seconds(prof) / wall


def gpu_extras(settings: Settings, config: Path, args: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name()}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-gpu-") as scratch:
        for name, extra in (("default_128px", []), ("resnet50_512px", RESNET50_512)):
            cli = build_cli(*args, *small_data(Path(scratch) / name), *extra, config=config,
                            device="cuda")
            batch = batches_in_memory(cli.datamodule.train_dataloader(), 1, "cuda")[0]
            loop = PlainLoop(cli.model, str(cli.config.trainer.precision), "cuda")
            rates = []
            for _ in range(settings.rounds):
                times = time_calls(lambda _, loop=loop, batch=batch: loop.step(batch),
                                   settings.steps, settings.warmup, "cuda")
                rates.append(len(batch["image"]) * len(times) / sum(times))
            result[f"{name}_train_images_per_s"] = spread(rates)
            if name == "default_128px":
                result["gpu_busy_fraction"] = busy_fraction(loop, batch, settings.steps)
    return result
