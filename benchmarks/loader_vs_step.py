"""Does data loading keep up with training? Train-loader samples/s over training samples/s.

The suite's measurement (``suite/loader.py``, key ``loader_vs_step_ratio`` of
``benchmarks/run.py``) on its own: the config's train loader alone (default workers, full
train transforms, collation) against the plain training step (forward, the three losses,
backward, AdamW step, under the config's precision) on batches already in memory. The
ratio must be at least 2 so that decoding and augmentation never starve training.

    python benchmarks/loader_vs_step.py [--config configs/default.yaml] [--quick]
        [--json benchmarks/results/loader_vs_step.json] [-- OVERRIDES...]

Each figure is the median over rounds, with min and max; the output states the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import DEFAULT_CONFIG, REPO, machine, quiet
from suite.loader import loader_vs_step
from suite.settings import FULL, QUICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" /
                        "loader_vs_step.json")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. -- --data.init_args.color_jitter=0.2")
    args = parser.parse_args()
    quiet()
    result = loader_vs_step(QUICK if args.quick else FULL, "cpu", args.config, args.overrides)
    result = {"machine": machine("cpu"), "config": str(args.config),
              "overrides": args.overrides, **result}
    print(f"machine: {result['machine']}")
    print(f"{'measure':<28}{'median':>10}{'min':>10}{'max':>10}")
    for name in ("loader_samples_per_s", "train_samples_per_s", "ratio"):
        values = result[name]
        print(f"{name:<28}{values['median']:>10.2f}{values['min']:>10.2f}{values['max']:>10.2f}")
    met = result["ratio"]["median"] >= result["target"]
    print(f"loader_vs_step_ratio: {result['ratio']['median']:.2f} "
          f"(target >= {result['target']}: {'met' if met else 'NOT met'})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
