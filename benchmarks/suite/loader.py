"""Does data loading keep up with training? ``loader_vs_step_ratio``: samples/s of the
config's train loader (its default workers, the full train transforms, collation) over the
training samples/s of :class:`~suite.plain_loop.PlainLoop` on batches already in memory.
At least 2, so that decoding and augmentation never starve the step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import batches_in_memory, build_cli, spread, time_calls
from .plain_loop import PlainLoop
from .settings import Settings

TARGET = 2.0


def loader_samples_per_second(loader: Any, batches: int) -> float:
    """Samples/s of ``batches`` batches of a fresh pass over ``loader`` (the first batch,
    which waits for the workers to start, is not timed)."""
    iterator = iter(loader)
    next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def loader_vs_step(settings: Settings, device: str, config: Path,
                   args: list[str]) -> dict[str, Any]:
    cli = build_cli(*args, config=config, device=device)
    data = cli.datamodule
    batches = batches_in_memory(data.train_dataloader(), settings.in_memory_batches, device)
    loop = PlainLoop(cli.model, str(cli.config.trainer.precision), device)
    size = len(batches[0]["image"])
    loader_rates, train_rates, ratios = [], [], []
    for _ in range(settings.rounds):
        loader_rate = loader_samples_per_second(data.train_dataloader(), settings.steps)
        times = time_calls(lambda i: loop.step(batches[i % len(batches)]), settings.steps,
                           settings.warmup, device)
        train_rate = size * len(times) / sum(times)
        loader_rates.append(loader_rate)
        train_rates.append(train_rate)
        ratios.append(loader_rate / train_rate)
    return {"ratio": spread(ratios), "loader_samples_per_s": spread(loader_rates),
            "train_samples_per_s": spread(train_rates), "num_workers": data.num_workers,
            "batch_size": size, "target": TARGET}
