"""Where does a training step's time go? The real Lightning fit of a config, profiled.

    python benchmarks/profile_step.py [--config configs/default.yaml] [--steps 20]
        [--warmup 5] [--top 25] [--torch] [--device cpu|cuda] [-- OVERRIDES...]

Runs ``warmup + steps`` training steps of the config (its loader, logger, callbacks;
no validation) and profiles the ``steps`` after the warm-up: by default with cProfile (the
Python functions of the project, Lightning, torchmetrics, sorted by cumulative time), with
``--torch`` with ``torch.profiler`` (operators sorted by self time, CUDA kernels included on
a GPU). This is the tool behind the entries of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import DEFAULT_CONFIG, build_cli, quiet


class Window(Callback):
    """Starts the profiler at the first step after the warm-up and stops it after
    ``steps`` steps."""

    def __init__(self, warmup: int, steps: int, use_torch: bool, device: str) -> None:
        self.window, self.seen = (warmup, warmup + steps), 0
        self.use_torch = use_torch
        activities = [ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.profiler: Any = (profile(activities=activities) if use_torch
                              else cProfile.Profile())

    def _start(self) -> None:
        if self.use_torch:
            self.profiler.__enter__()
        else:
            self.profiler.enable()

    def _stop(self) -> None:
        if self.use_torch:
            self.profiler.__exit__(None, None, None)
        else:
            self.profiler.disable()

    def on_train_batch_start(self, *args: Any) -> None:
        if self.seen == self.window[0]:
            self._start()
        if self.seen == self.window[1]:
            self._stop()
        self.seen += 1

    def report(self, top: int) -> str:
        if self.use_torch:
            return self.profiler.key_averages().table(sort_by="self_cpu_time_total",
                                                      row_limit=top)
        stream = io.StringIO()
        pstats.Stats(self.profiler, stream=stream).sort_stats("cumulative").print_stats(top)
        return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--torch", action="store_true", help="torch.profiler, not cProfile")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides, after --")
    args = parser.parse_args()
    quiet()
    total = args.warmup + args.steps + 1
    cli = build_cli(*args.overrides, f"--trainer.max_steps={total}",
                    "--trainer.limit_val_batches=0", config=args.config, device=args.device,
                    logger=True)
    window = Window(args.warmup, args.steps, args.torch, args.device)
    cli.trainer.callbacks.append(window)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(window.report(args.top))


if __name__ == "__main__":
    main()
