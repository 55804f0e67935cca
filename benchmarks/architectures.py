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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import REPO, batches_in_memory, build_cli, machine, quiet, spread, time_calls
from suite.plain_loop import PlainLoop

ARCHITECTURES = ("hard", "mtan", "cross_stitch", "ensemble")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "architectures.json")
    args = parser.parse_args()
    quiet()
    built = {}
    for name in ARCHITECTURES:
        cli = build_cli(f"--model.architecture={name}", config=args.config)
        batches = batches_in_memory(cli.datamodule.train_dataloader(), 4, "cpu")
        built[name] = (PlainLoop(cli.model, str(cli.config.trainer.precision), "cpu"), batches)
    rates: dict[str, list[float]] = {name: [] for name in ARCHITECTURES}
    for _ in range(args.repeats):
        for name, (loop, batches) in built.items():
            times = time_calls(lambda i, loop=loop, batches=batches:
                               loop.step(batches[i % len(batches)]), args.batches, 1, "cpu")
            rates[name].append(len(batches[0]["image"]) * len(times) / sum(times))
    rows = {}
    for name, (loop, _) in built.items():
        rows[name] = {
            "params_m": sum(p.numel() for p in loop.model.parameters()) / 1e6,
            "train_images_per_s": spread(rates[name]),
        }
    hard = rows["hard"]["train_images_per_s"]["median"]
    result = {"machine": machine("cpu"), "config": str(args.config), "architectures": rows}
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
