"""Training-step overheads: Lightning around the step, and target assignment plus losses
inside it.

- ``train_step_overhead``: a step of the real Lightning fit (the config's loader with its
  default workers, forward, target assignment and the three losses, the balancer, backward,
  gradient clipping, the AdamW step, the scheduler, training metrics, the configured logger
  and progress bar) over a step of :class:`~suite.plain_loop.PlainLoop` on the same model
  and batch size, with batches already in memory. A Lightning step is the wall time from
  one ``on_train_batch_start`` to the next, so it holds everything paid per batch.
- ``loss_overhead``: the plain loop with the real losses over the same loop with a trivial
  loss (the mean of every output), on the same model and batches.

Each round measures both sides (in alternating order, so a drift of the machine does not
favour one) and divides; the result is the median ratio over rounds with min and max.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import (
    StepTimer,
    batches_in_memory,
    build_cli,
    spread,
    time_calls,
)
from .plain_loop import PlainLoop
from .settings import Settings

TARGETS = {"train_step_overhead": 1.15, "loss_overhead": 1.2}


def plain_step_times(loop: PlainLoop, batches: list[dict], settings: Settings,
                     device: str) -> list[float]:
    return time_calls(lambda i: loop.step(batches[i % len(batches)]), settings.steps,
                      settings.warmup, device)


def lightning_step_times(config: Path, args: list[str], settings: Settings,
                         device: str) -> tuple[list[float], Any]:
    """Step times of a real fit of ``settings.warmup + steps`` steps (no validation);
    returns them and the CLI (its model, trained for those steps, and its data)."""
    total = settings.warmup + settings.steps + 1
    cli = build_cli(*args, f"--trainer.max_steps={total}", "--trainer.limit_val_batches=0",
                    config=config, device=device, logger=True)
    timer = StepTimer(sync=device == "cuda")
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    times = timer.step_times(settings.warmup, settings.steps)
    if len(times) < settings.steps:
        raise RuntimeError(f"only {len(times)} of {settings.steps} Lightning steps were timed")
    return times, cli


def train_step_overhead(settings: Settings, device: str, config: Path,
                        args: list[str]) -> dict[str, Any]:
    lightning_ms, plain_ms, ratios = [], [], []
    batches: list[dict] = []
    for round_index in range(settings.rounds):
        plain_first = round_index % 2 == 1
        if plain_first and batches:
            cli = build_cli(*args, config=config, device=device)
            plain = statistics.median(plain_step_times(
                PlainLoop(cli.model, str(cli.config.trainer.precision), device), batches,
                settings, device))
        times, cli = lightning_step_times(config, args, settings, device)
        lightning = statistics.median(times)
        if not batches:
            batches = batches_in_memory(cli.datamodule.train_dataloader(),
                                        settings.in_memory_batches, device)
        if not plain_first:
            plain = statistics.median(plain_step_times(
                PlainLoop(cli.model, str(cli.config.trainer.precision), device), batches,
                settings, device))
        lightning_ms.append(1e3 * lightning)
        plain_ms.append(1e3 * plain)
        ratios.append(lightning / plain)
    return {"ratio": spread(ratios), "lightning_ms": spread(lightning_ms),
            "plain_ms": spread(plain_ms), "target": TARGETS["train_step_overhead"],
            "batch_size": len(batches[0]["image"])}


def loss_overhead(settings: Settings, device: str, config: Path,
                  args: list[str]) -> dict[str, Any]:
    cli = build_cli(*args, config=config, device=device)
    precision = str(cli.config.trainer.precision)
    batches = batches_in_memory(cli.datamodule.train_dataloader(),
                                settings.in_memory_batches, device)
    loops = {kind: PlainLoop(cli.model, precision, device, loss=kind)
             for kind in ("real", "trivial")}
    real_ms, trivial_ms, ratios = [], [], []
    for round_index in range(settings.rounds):
        order = ("real", "trivial") if round_index % 2 == 0 else ("trivial", "real")
        median = {kind: statistics.median(plain_step_times(loops[kind], batches, settings,
                                                           device)) for kind in order}
        real_ms.append(1e3 * median["real"])
        trivial_ms.append(1e3 * median["trivial"])
        ratios.append(median["real"] / median["trivial"])
    return {"ratio": spread(ratios), "real_loss_ms": spread(real_ms),
            "trivial_loss_ms": spread(trivial_ms), "target": TARGETS["loss_overhead"]}
