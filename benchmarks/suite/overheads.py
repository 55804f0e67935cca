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
``train_step_overhead`` also reports ``in_memory_ratio``: the Lightning fit on the plain
loop's batches, which splits the overhead into Lightning's part and the loader's.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import (
    InMemoryBatches,
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


def lightning_step_times(config: Path, args: list[str], settings: Settings, device: str,
                         batches: list[dict] | None = None) -> tuple[list[float], Any]:
    """Step times of a real fit of ``settings.warmup + steps`` steps (no validation);
    returns them and the CLI (its model, trained for those steps, and its data). With
    ``batches``, the fit reads them from memory instead of the config's loader."""
    total = settings.warmup + settings.steps + 1
    cli = build_cli(*args, f"--trainer.max_steps={total}", "--trainer.limit_val_batches=0",
                    config=config, device=device, logger=True)
    timer = StepTimer(sync=device == "cuda")
    cli.trainer.callbacks.append(timer)
    if batches is None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:
        cli.trainer.fit(cli.model, train_dataloaders=InMemoryBatches(batches, total))
    times = timer.step_times(settings.warmup, settings.steps)
    if len(times) < settings.steps:
        raise RuntimeError(f"only {len(times)} of {settings.steps} Lightning steps were timed")
    return times, cli


def train_step_overhead(settings: Settings, device: str, config: Path,
                        args: list[str]) -> dict[str, Any]:
    """The ratio, and where it comes from: each round also times the same Lightning fit on
    the plain loop's in-memory batches (``in_memory_ratio``: Lightning, logging, metrics,
    clipping and callbacks without the loader). What ``ratio`` adds to it is the loader's
    cost to the step: its worker shares the machine's cores with the step."""
    first = build_cli(*args, config=config, device=device)
    batches = batches_in_memory(first.datamodule.train_dataloader(),
                                settings.in_memory_batches, device)
    precision = str(first.config.trainer.precision)
    ms: dict[str, list[float]] = {"lightning": [], "in_memory": [], "plain": []}
    ratios, in_memory_ratios = [], []
    for round_index in range(settings.rounds):
        order = ["lightning", "in_memory", "plain"]
        if round_index % 2:
            order.reverse()
        medians = {}
        for side in order:
            if side == "plain":
                model = build_cli(*args, config=config, device=device).model
                times = plain_step_times(PlainLoop(model, precision, device), batches,
                                         settings, device)
            else:
                times, _ = lightning_step_times(
                    config, args, settings, device,
                    batches if side == "in_memory" else None)
            medians[side] = statistics.median(times)
            ms[side].append(1e3 * medians[side])
        ratios.append(medians["lightning"] / medians["plain"])
        in_memory_ratios.append(medians["in_memory"] / medians["plain"])
    return {"ratio": spread(ratios), "in_memory_ratio": spread(in_memory_ratios),
            "lightning_ms": spread(ms["lightning"]),
            "lightning_in_memory_ms": spread(ms["in_memory"]),
            "plain_ms": spread(ms["plain"]), "target": TARGETS["train_step_overhead"],
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
