"""Parameters and training images/s of each architecture (hard, cross-stitch, MTAN, ensemble).

    python benchmarks/architectures.py [--config configs/default.yaml] [--repeats 5]
        [--batches 10] [--json benchmarks/results/architectures.json]

The same data, batch and precision as the config (default: the default job's model and
16 images of 128 px under bf16 autocast); each architecture's training step (forward, the
three losses, backward, AdamW step) on batches already in memory, the architectures
interleaved round by round so that machine noise hits them alike. Figures are medians over
``--repeats`` rounds after a warm-up, with min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader_vs_step import REPO, build, cpu_model, time_steps

ARCHITECTURES = ("hard", "mtan", "cross_stitch", "ensemble")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "architectures.json")
    args = parser.parse_args()
    built = {name: build(args.config, [f"--model.architecture={name}"])
             for name in ARCHITECTURES}
    rates: dict[str, list[float]] = {name: [] for name in ARCHITECTURES}
    for _ in range(args.repeats):
        for name, (data, model, precision) in built.items():
            rates[name] += time_steps(data, model, precision, args.batches, repeats=1)
    rows = {}
    for name, (_, model, _) in built.items():
        values = rates[name]
        rows[name] = {
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "train_images_per_s": {"median": statistics.median(values),
                                   "min": min(values), "max": max(values)},
        }
    hard = rows["hard"]["train_images_per_s"]["median"]
    result = {"machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "config": str(args.config), "architectures": rows}
    print(f"machine: {result['machine']}")
    print(f"{'architecture':<14}{'params (M)':>12}{'img/s':>9}{'min':>9}{'max':>9}"
          f"{'vs hard':>9}")
    for name, row in rows.items():
        speed = row["train_images_per_s"]
        print(f"{name:<14}{row['params_m']:>12.2f}{speed['median']:>9.1f}{speed['min']:>9.1f}"
              f"{speed['max']:>9.1f}{speed['median'] / hard:>9.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
