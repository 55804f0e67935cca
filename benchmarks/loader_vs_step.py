"""Does data loading keep up with training? Train-loader samples/s over training samples/s.

Both are measured in this one process on the same machine, with the data and model of a
config (default: ``configs/default.yaml``): the loader alone (default workers, full train
transforms, collation), then the model's training step alone (forward, the three losses,
backward, AdamW step, under the config's precision) on batches already in memory. The ratio
must be at least 2 so that decoding and augmentation never starve training.

    python benchmarks/loader_vs_step.py [--config configs/default.yaml] [--repeats 5]
        [--batches 20] [--json benchmarks/results/loader_vs_step.json] [-- OVERRIDES...]

Each figure is the median of ``--repeats`` timed repetitions after one warm-up, with min
and max; the table states the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from mtl_lightning.cli import MultiTaskCLI
from mtl_lightning.module import MultiTaskModule

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(config: Path, overrides: list[str]) -> tuple[Any, Any, str]:
    """The config's data module (prepared and set up), model and precision, via the CLI."""
    scratch = tempfile.mkdtemp(prefix="mtl-bench-")
    cli = MultiTaskCLI(
        MultiTaskModule, LightningDataModule, subclass_mode_data=True, run=False,
        args=["--config", str(config), "--trainer.logger", "false",
              "--trainer.default_root_dir", scratch, *overrides],
    )
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    return data, cli.model, str(cli.config.trainer.precision)


def time_loader(data: Any, batches: int, repeats: int) -> list[float]:
    loader = data.train_dataloader()
    rates = []
    iterator = iter(loader)
    next(iterator)  # warm-up: starts the workers
    for _ in range(repeats):
        start, seen = time.perf_counter(), 0
        for _ in range(batches):
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                batch = next(iterator)
            seen += len(batch["image"])
        rates.append(seen / (time.perf_counter() - start))
    return rates


def time_steps(data: Any, model: Any, precision: str, batches: int, repeats: int) -> list[float]:
    loader = iter(data.train_dataloader())
    in_memory = [next(loader) for _ in range(min(batches, 8))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16")
        else nullcontext()
    )
    model.train()

    def step(batch: dict) -> None:
        with autocast:
            outputs = model(batch["image"])
            losses = {
                name: task.loss(outputs[name], batch["targets"][name], batch["has"][name])
                for name, task in model.tasks.items()
            }
            total = sum(losses.values())  # equal weighting: the default balancer
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    step(in_memory[0])  # warm-up
    rates = []
    for _ in range(repeats):
        start, seen = time.perf_counter(), 0
        for i in range(batches):
            batch = in_memory[i % len(in_memory)]
            step(batch)
            seen += len(batch["image"])
        rates.append(seen / (time.perf_counter() - start))
    return rates


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" /
                        "loader_vs_step.json")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. --data.init_args.color_jitter=0.2")
    args = parser.parse_args()
    data, model, precision = build(args.config, args.overrides)
    loader = summary(time_loader(data, args.batches, args.repeats))
    steps = summary(time_steps(data, model, precision, args.batches, args.repeats))
    ratio = loader["median"] / steps["median"]
    result = {
        "overrides": args.overrides,
        "machine": {"cpu": cpu_model(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "config": str(args.config), "num_workers": data.num_workers,
        "batch_size": data.batch_size, "precision": precision,
        "loader_samples_per_s": loader, "train_samples_per_s": steps,
        "loader_vs_step_ratio": ratio, "target": 2.0, "meets_target": ratio >= 2.0,
    }
    print(f"machine: {result['machine']}")
    print(f"{'measure':<28}{'median':>10}{'min':>10}{'max':>10}")
    for name, values in [("loader samples/s", loader), ("train samples/s", steps)]:
        print(f"{name:<28}{values['median']:>10.1f}{values['min']:>10.1f}{values['max']:>10.1f}")
    print(f"loader_vs_step_ratio: {ratio:.2f} (target >= 2.0: "
          f"{'met' if ratio >= 2.0 else 'NOT met'})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
