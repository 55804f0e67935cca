"""Parameters and training images/s of each architecture (hard, cross-stitch, MTAN, ensemble,
gated experts, PAD-Net, MTI-Net).

    python benchmarks/architectures.py [--config configs/default.yaml] [--repeats 5]
        [--batches 10] [--json benchmarks/results/architectures.json]
        [--architectures hard,pad_net,...] [--args "--config configs/experiment/aux_edges.yaml"]

The step's losses are the module's own (``_task_losses``): a task-interaction decoder's
deep-supervision losses are part of its cost. ``--args`` adds CLI arguments to every model,
e.g. the auxiliary edge task, so that PAD-Net and MTI-Net have two dense tasks to distil.

The same data, batch and precision as the config (default: the default job's model and
16 images of 128 px under bf16 autocast); each architecture's training step (forward, the
three losses, backward, AdamW step) on batches already in memory, the architectures
interleaved round by round so that machine noise hits them alike. Figures are medians over
``--repeats`` rounds after a warm-up, with min and max.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import REPO, batches_in_memory, build_cli, machine, quiet, spread, time_calls
from suite.plain_loop import PlainLoop

ARCHITECTURES = ("hard", "mtan", "cross_stitch", "ensemble", "mmoe", "pad_net", "mti_net")


class ModuleLossLoop(PlainLoop):
    """The plain loop with the module's own task losses (deep supervision included)."""

    def total_loss(self, batch: dict):
        losses, _ = self.model._task_losses(batch, "train", update_metrics=False)
        return sum(losses.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--args", default="", help="more CLI arguments for every model")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "architectures.json")
    args = parser.parse_args()
    quiet()
    built = {}
    names = args.architectures.split(",")
    for name in names:
        cli = build_cli(*shlex.split(args.args), f"--model.architecture={name}",
                        config=args.config)
        batches = batches_in_memory(cli.datamodule.train_dataloader(), 4, "cpu")
        built[name] = (ModuleLossLoop(cli.model, str(cli.config.trainer.precision), "cpu"),
                       batches)
    rates: dict[str, list[float]] = {name: [] for name in names}
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
    hard = rows.get("hard", next(iter(rows.values())))["train_images_per_s"]["median"]
    result = {"machine": machine("cpu"), "config": str(args.config), "args": args.args,
              "architectures": rows}
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
