"""How the cost grows: ``scaling``, the plain training step's time
(:class:`~suite.plain_loop.PlainLoop`, real losses) against

- the image size (``scaling_sizes``: 128, 256, 512 px; the default model and its three
  tasks), and
- the number of tasks at the first size: classification; + segmentation; + detection (the default);
  + the auxiliary edge task (``configs/experiment/aux_edges.yaml``);

and, for the data side, the training-set size with the sample cache on and off (the
``data_<n>_cache_<on|off>`` entries, suite/data_scaling.py: cache memory, its set-up time,
and the loader's time per sample).

Each variant gets a small Scenes set of its own (16 training images) in a scratch folder.
Rounds interleave the variants; the figures are medians over rounds, with each variant's
ratio to the reference (the first size, three tasks) in the same round.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .common import REPO, batches_in_memory, build_cli, spread, time_calls
from .data_scaling import data_size_scaling
from .plain_loop import PlainLoop
from .settings import Settings

TASK_SETS = (("classification",), ("classification", "segmentation"),
             ("classification", "segmentation", "detection"))
AUXILIARY = REPO / "configs" / "experiment" / "aux_edges.yaml"


def task_subset_config(tasks: tuple[str, ...], folder: Path) -> Path:
    """A config file that keeps only ``tasks`` of the data; the default model trains what
    the data labels, with its ``task_options``."""
    subset = {"data": {"init_args": {"tasks": list(tasks)}}}
    path = folder / f"tasks_{len(tasks)}.yaml"
    path.write_text(yaml.safe_dump(subset))
    return path


def variants(folder: Path, sizes: tuple[int, ...]) -> dict[str, list[str]]:
    """Name -> extra CLI arguments of every measured variant (the task variants at the
    first size)."""
    result = {f"size_{size}": [f"--data.init_args.image_size={size}"] for size in sizes}
    first = result[f"size_{sizes[0]}"]
    for tasks in TASK_SETS[:-1]:
        result[f"tasks_{len(tasks)}"] = [*first, "--config",
                                         str(task_subset_config(tasks, folder))]
    result["tasks_3"] = first  # the default, measured again among the task variants
    result["tasks_3_aux"] = [*first, "--config", str(AUXILIARY)]
    return result


def small_data(root: Path) -> list[str]:
    return [f"--data.init_args.root={root}", "--data.init_args.num_train=16",
            "--data.init_args.num_val=8", "--data.init_args.num_test=8",
            "--data.init_args.num_workers=0", "--data.init_args.generator_workers=0"]


def scaling(settings: Settings, device: str, config: Path, args: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mtl-bench-scaling-") as scratch:
        folder = Path(scratch)
        loops: dict[str, tuple[PlainLoop, list[dict]]] = {}
        for name, extra in variants(folder, settings.scaling_sizes).items():
            cli = build_cli(*args, *small_data(folder / "scenes"), *extra, config=config,
                            device=device)
            batches = batches_in_memory(cli.datamodule.train_dataloader(), 1, device)
            loops[name] = (PlainLoop(cli.model, str(cli.config.trainer.precision), device),
                           batches)
        milliseconds: dict[str, list[float]] = {name: [] for name in loops}
        for round_index in range(settings.rounds):
            names = list(loops) if round_index % 2 == 0 else list(reversed(loops))
            for name in names:
                loop, batches = loops[name]
                steps = settings.scaling_steps if name.startswith("size_") else settings.steps
                times = time_calls(lambda _, loop=loop, batch=batches[0]: loop.step(batch),
                                   steps, min(settings.warmup, 2), device)
                milliseconds[name].append(1e3 * statistics.median(times))
        data_sizes = data_size_scaling(settings, device, config, args, folder)
    base = milliseconds[f"size_{settings.scaling_sizes[0]}"]
    return {
        **{name: {"step_ms": spread(values),
                  "ratio_to_default": spread([v / b for v, b in zip(values, base)])}
           for name, values in milliseconds.items()},
        **data_sizes,
    }
