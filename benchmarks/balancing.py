"""What does each balancing method cost? Training-step time relative to equal weighting.

For every balancer config in ``configs/balancer/`` (and, for the methods whose config takes the
task gradients at every shared parameter, the same method with ``source: representation``,
named e.g. ``pcgrad@representation``), this measures, in one process on the same machine:

- the time of the real Lightning training step (forward, the three task losses, the balancer,
  the module's ``backward`` hook, gradient clipping at 5.0, the AdamW step, the scheduler,
  logging, FAMO's extra forward in ``on_train_batch_end``) under bf16-mixed, relative to
  ``equal.yaml``: a step is the wall time from one ``on_train_batch_start`` to the next, so
  everything Lightning does for a batch is inside it;
- the peak memory the training adds on top of the built model (see ``--device``).

Setup: the default job's model (``configs/default.yaml``: half-width ResNet-18, neck and
heads of 32 channels, channels-last, 3 tasks) and batch (16 Scenes images of 128 px through
the train transforms); a small Scenes set is generated once under ``--data-root``. A few real
batches are kept in memory and cycled (no loader, no validation, ``logger=False``, no
checkpointing, no progress bar), so only the step is timed. Each method is built fresh (same
seed) for every round; the first ``warmup`` steps are skipped and the median of the next
``steps`` is taken (steps stay below ``statistics_every=50``, so the 1-in-50 gradient-statistics
steps of the loss weightings are not timed). Rounds interleave the methods (A, B, C, A, B, C,
..., each round after the first shuffled, see :func:`round_order`) and each round's median
is divided by the same round's equal-weighting median; the table shows the median ratio over
rounds with its min and max. ``static.yaml`` runs the same computation as ``equal.yaml``
(only the weight values differ): its ratio is the measurement's own noise.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during ``fit`` minus what was allocated
before it (model weights). On CPU, the peak resident set size (RSS, ``/proc/self/statm``)
sampled every 2 ms by a thread during ``fit``, minus the RSS just before it (after
``malloc_trim`` hands freed heap back to the system): optimizer state, activations, task
gradients and Jacobians, plus allocator slack. Reported as the median over rounds.

Targets: loss weightings <= 1.05x (FAMO ``same_batch`` excepted: the paper's update needs an
extra forward per step by definition; ``famo_fast`` is the free variant), gradient methods at
the representation <= 1.1x, gradient methods at the parameters <= 2.3x.

    python benchmarks/balancing.py [--quick] [--device cpu|cuda] [--methods equal,pcgrad,...]
        [--rounds 3] [--steps 20] [--warmup 3] [--json benchmarks/results/balancing.json]
    python benchmarks/balancing.py --profile --methods pcgrad,nash_mtl   # where the time goes

``run(quick, device, methods)`` does the measurement and returns the result dict (for other
scripts); ``--device cuda`` skips cleanly (exit 0) when there is no GPU. ``--profile`` runs
the ``--methods`` under cProfile instead and prints their most expensive functions.

Timings on a shared machine are noisy: read the min and max columns before a verdict, and
compare numbers only from the same machine and device.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningDataModule, Trainer

from mtl_lightning.balancing import GradientWeighting
from mtl_lightning.cli import MultiTaskCLI
from mtl_lightning.module import MultiTaskModule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import (
    InMemoryBatches,
    RssSampler,
    StepTimer,
    machine,
    quiet,
    release_freed_memory,
    spread,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "default.yaml"
BALANCERS = REPO / "configs" / "balancer"
BASELINE = "equal"
TARGETS = {"loss": 1.05, "representation": 1.1, "parameters": 2.3}
EXEMPT = {"famo": "extra forward by definition"}  # FAMO update: same_batch
# Scenes at the default job's image size and classes, only fewer images (generated once).
DATA_ARGS = {"num_train": 64, "num_val": 16, "num_test": 16, "num_workers": 0,
             "generator_workers": 0}
IN_MEMORY_BATCHES = 4
FULL = {"rounds": 3, "steps": 20, "warmup": 3}
QUICK = {"rounds": 2, "steps": 5, "warmup": 1}


# ----------------------------------------------------------------------------- methods
def available_methods() -> list[str]:
    """Every balancer config, equal first, then the ``@representation`` variant of each
    method whose config takes its gradients at the parameters."""
    names, variants = [], []
    for path in sorted(BALANCERS.glob("*.yaml")):
        names.append(path.stem)
        init_args = (yaml.safe_load(path.read_text()) or {}).get("init_args") or {}
        if init_args.get("source") == "parameters":
            variants.append(f"{path.stem}@representation")
    names.remove(BASELINE)
    return [BASELINE, *names, *variants]


def balancer_args(method: str) -> list[str]:
    """CLI arguments that select ``method`` (``name`` or ``name@source``)."""
    name, _, source = method.partition("@")
    path = BALANCERS / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown method {method!r}; known: {', '.join(available_methods())}")
    args = ["--model.balancer", str(path)]
    if source:
        args += ["--model.balancer.init_args.source", source]
    return args


def family(balancer: Any) -> str:
    """``loss``, or where a gradient method takes its task gradients."""
    return balancer.source if isinstance(balancer, GradientWeighting) else "loss"


def target(method: str, kind: str) -> float | None:
    """The largest step-time ratio to equal weighting allowed for ``method`` (None: exempt)."""
    return None if method in EXEMPT else TARGETS[kind]


# ------------------------------------------------------------------------ measurement
def build(method: str, data_root: Path, scratch: str) -> MultiTaskCLI:
    """The default job's data module and model with ``method`` as balancer, via the CLI."""
    data = [f"--data.init_args.{k}={v}" for k, v in DATA_ARGS.items()]
    return MultiTaskCLI(
        MultiTaskModule, LightningDataModule, subclass_mode_data=True, run=False,
        args=["--config", str(CONFIG), "--trainer.logger", "false",
              "--trainer.default_root_dir", scratch, f"--data.init_args.root={data_root}",
              *data, *balancer_args(method)],
    )


def train_batches(cli: MultiTaskCLI, device: str) -> list[dict]:
    """A few real training batches (train transforms, collation), already on ``device``."""
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(IN_MEMORY_BATCHES)]
    return [move_data_to_device(b, torch.device(device)) for b in batches]


def fit(model: MultiTaskModule, batches: list[dict], settings: dict[str, Any], device: str,
        scratch: str, callback: Callback) -> None:
    """The real Lightning training loop, ``warmup + steps + 1`` steps on in-memory batches."""
    total = settings["warmup"] + settings["steps"] + 1
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1,
        precision=settings["precision"], gradient_clip_val=settings["gradient_clip_val"],
        max_epochs=1, max_steps=total, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[callback], default_root_dir=scratch,
    )
    trainer.fit(model, train_dataloaders=InMemoryBatches(batches, total))


def measure(model: MultiTaskModule, batches: list[dict], settings: dict[str, Any],
            device: str, scratch: str) -> tuple[list[float], float]:
    """Step times (after warm-up) and the memory the training adds, in bytes."""
    timer = StepTimer(sync=device == "cuda")
    release_freed_memory()
    # Everything built before this fit (this and earlier models, configs, imported solvers) is
    # frozen out of the garbage collector, so its full passes during the steps cost the same
    # for every method, wherever it comes in the run.
    gc.freeze()
    try:
        added = _fit_and_measure_memory(model, batches, settings, device, scratch, timer)
    finally:
        gc.unfreeze()
    times = timer.step_times(settings["warmup"], settings["steps"])
    if len(times) < settings["steps"]:
        raise RuntimeError(f"only {len(times)} of {settings['steps']} steps were timed")
    return times, added


def _fit_and_measure_memory(model: MultiTaskModule, batches: list[dict],
                            settings: dict[str, Any], device: str, scratch: str,
                            timer: StepTimer) -> float:
    """Run the fit; the memory it adds on top of the built model, in bytes."""
    if device == "cuda":
        model.to(device)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fit(model, batches, settings, device, scratch, timer)
        torch.cuda.synchronize()
        added = torch.cuda.max_memory_allocated() - before
    else:
        with RssSampler() as sampler:
            before = sampler.peak
            fit(model, batches, settings, device, scratch, timer)
        added = sampler.peak - before
    return float(added)


class Profiled(Callback):
    """cProfile over the steps that would be timed (after the warm-up)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.window, self.seen = (warmup, warmup + steps), 0
        self.profile = cProfile.Profile()

    def on_train_batch_start(self, *args: Any) -> None:
        if self.seen == self.window[0]:
            self.profile.enable()
        if self.seen == self.window[1]:
            self.profile.disable()
        self.seen += 1


def round_order(methods: list[str], round_index: int) -> list[str]:
    """Round 1 in list order (equal first), later rounds in a seeded shuffle: every round holds
    every method once, but no method keeps its position or its predecessor, so an effect of
    either hits a method in one round at most and the median over rounds drops it. (On an
    H100, equal, always first or after the same method, ran 10-20% slower than static, the
    same computation.)"""
    order = list(methods)
    if round_index:
        random.Random(round_index).shuffle(order)
    return order


def prepare(quick: bool, device: str, methods: list[str] | None, overrides: dict[str, Any],
            scratch: str) -> tuple[list[str], dict[str, Any], list[dict]]:
    """The method list (equal first), the settings and the in-memory batches."""
    quiet()
    methods = list(methods or available_methods())
    for method in methods:
        balancer_args(method)  # fail early on a typo
    if BASELINE in methods:
        methods.remove(BASELINE)
    settings: dict[str, Any] = dict(QUICK if quick else FULL)
    settings.update({k: v for k, v in overrides.items() if v})
    first = build(BASELINE, settings["data_root"], scratch)
    settings["precision"] = str(first.config.trainer.precision)
    settings["gradient_clip_val"] = first.config.trainer.gradient_clip_val
    return [BASELINE, *methods], settings, train_batches(first, device)


def run(quick: bool, device: str, methods: list[str] | None, *, rounds: int | None = None,
        steps: int | None = None, warmup: int | None = None,
        data_root: Path | None = None) -> dict[str, Any]:
    """Measure ``methods`` (default: all, see :func:`available_methods`) against equal
    weighting; returns the result dict that ``main`` prints and writes as JSON."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "--device cuda: no CUDA device available", "device": device}
    overrides = {"rounds": rounds, "steps": steps, "warmup": warmup,
                 "data_root": data_root or REPO / "data" / "scenes"}
    times: dict[str, list[float]] = {}  # per-round medians, seconds
    memory: dict[str, list[float]] = {}  # per round, bytes
    info: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}  # methods that failed: left out of later rounds
    with tempfile.TemporaryDirectory(prefix="mtl-bench-balancing-") as scratch:
        methods, settings, batches = prepare(quick, device, methods, overrides, scratch)
        # One untimed fit first: process-wide lazy set-up (kernel caches, CUDA context,
        # cuDNN) must not land on whichever method happens to come first.
        measure(build(BASELINE, settings["data_root"], scratch).model, batches,
                {**settings, "steps": 1}, device, scratch)
        start = time.perf_counter()
        for round_index in range(settings["rounds"]):
            for method in round_order(methods, round_index):
                if method in errors:
                    continue
                try:
                    model = build(method, settings["data_root"], scratch).model
                    info[method] = {"class": type(model.balancer).__name__,
                                    "family": family(model.balancer)}
                    step_times, added = measure(model, batches, settings, device, scratch)
                except Exception as error:  # report it and go on with the other methods
                    if method == BASELINE:
                        raise
                    errors[method] = f"{type(error).__name__}: {error}"
                    print(f"{method}: {errors[method]}", file=sys.stderr, flush=True)
                    continue
                finally:
                    model = None
                times.setdefault(method, []).append(statistics.median(step_times))
                memory.setdefault(method, []).append(added)
                print(f"round {round_index + 1}/{settings['rounds']} {method:<26} "
                      f"{1e3 * times[method][-1]:8.1f} ms/step {added / 2**20:8.1f} MiB "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    settings["data_root"] = str(settings["data_root"])
    return {
        "benchmark": "balancing", "device": device, "quick": quick,
        "machine": machine(device), "model": "configs/model/hard.yaml (via configs/default.yaml)",
        "batch": {"size": len(batches[0]["image"]),
                  "image_size": list(batches[0]["image"].shape[-2:])},
        "tasks": list(batches[0]["targets"]), **settings,
        "memory_measure": (
            "peak torch.cuda.max_memory_allocated during fit minus allocated before fit"
            if device == "cuda" else
            "peak RSS sampled every 2 ms during fit minus RSS before fit (after malloc_trim)"
        ),
        "targets": {**TARGETS, "exempt": EXEMPT},
        "methods": summarise(methods, times, memory, info, errors),
    }


def summarise(methods: list[str], times: dict[str, list[float]],
              memory: dict[str, list[float]], info: dict[str, dict[str, Any]],
              errors: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per method: ratios to the same round's equal weighting, memory, target and verdict."""
    baseline, base_memory = times[BASELINE], statistics.median(memory[BASELINE])
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method in errors:
            results[method] = {**info.get(method, {}), "error": errors[method]}
            continue
        ratios = [t / b for t, b in zip(times[method], baseline)]
        limit = target(method, info[method]["family"])
        results[method] = {
            **info[method],
            "step_ms": spread([1e3 * t for t in times[method]]),
            "ratio": {**spread(ratios), "per_round": ratios},
            "memory_mib": statistics.median(memory[method]) / 2**20,
            "memory_vs_equal_mib": (statistics.median(memory[method]) - base_memory) / 2**20,
            "target": limit,
            "exempt": EXEMPT.get(method),
            "meets_target": None if limit is None else statistics.median(ratios) <= limit,
        }
    return results


def profile(device: str, methods: list[str], data_root: Path, top: int = 25) -> None:
    """Print where each method's steps spend their time (equal first, for reference): cProfile
    over the quick setting's timed steps, the ``top`` functions of the project, torchjd,
    cvxpy and autograd by cumulative time."""
    with tempfile.TemporaryDirectory(prefix="mtl-bench-balancing-") as scratch:
        methods, settings, batches = prepare(True, device, methods,
                                             {"data_root": data_root}, scratch)
        for method in methods:
            model = build(method, settings["data_root"], scratch).model
            profiled = Profiled(settings["warmup"], settings["steps"])
            fit(model, batches, settings, device, scratch, profiled)
            out = io.StringIO()
            stats = pstats.Stats(profiled.profile, stream=out).sort_stats("cumulative")
            stats.print_stats("mtl_lightning|torchjd|cvxpy|autograd/__init__", top)
            print(f"=== {method} ({device}): cProfile over {settings['steps']} steps\n"
                  f"{out.getvalue()}")


# ------------------------------------------------------------------------------ report
def table(result: dict[str, Any]) -> str:
    """The result as a markdown table, with the machine and settings above it."""
    equal = result["methods"][BASELINE]["step_ms"]
    lines = [
        f"machine: {result['machine']}, device: {result['device']}, "
        f"precision: {result['precision']}, clip: {result['gradient_clip_val']}",
        f"batch: {result['batch']['size']} x {result['batch']['image_size']} px, tasks: "
        f"{', '.join(result['tasks'])}; {result['rounds']} rounds x median of "
        f"{result['steps']} steps after {result['warmup']} warm-up",
        f"equal weighting: {equal['median']:.1f} ms/step (rounds: {equal['min']:.1f} to "
        f"{equal['max']:.1f}); memory: {result['memory_measure']}",
        *noise_gauge(result["methods"]),
        "",
        "| method | balancer | gradients | step ms | x equal | min | max | target | "
        "memory MiB | vs equal | pass |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for method, row in result["methods"].items():
        if "error" in row:
            lines.append(f"| {method} | {row.get('class', '?')} | {row.get('family', '?')} | "
                         f"error: {row['error'][:80]} |  |  |  |  |  |  | FAIL |")
            continue
        ratio, limit = row["ratio"], row["target"]
        verdict = "-" if limit is None else ("pass" if row["meets_target"] else "FAIL")
        lines.append(
            f"| {method} | {row['class']} | {row['family']} | {row['step_ms']['median']:.1f} | "
            f"{ratio['median']:.2f} | {ratio['min']:.2f} | {ratio['max']:.2f} | "
            f"{'n/a (' + row['exempt'] + ')' if limit is None else f'<= {limit:g}'} | "
            f"{row['memory_mib']:.0f} | {row['memory_vs_equal_mib']:+.0f} | {verdict} |"
        )
    return "\n".join(lines)


def noise_gauge(methods: dict[str, dict[str, Any]]) -> list[str]:
    """A header line: static runs equal's computation, so its ratio should read 1.00."""
    twin = methods.get("static", {}).get("ratio")
    if twin is None:
        return []
    return [f"noise gauge: static (equal's computation, other weights) = {twin['median']:.2f}x "
            f"(rounds {twin['min']:.2f} to {twin['max']:.2f}); gaps from 1 smaller than its "
            f"are noise"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer rounds and steps ({QUICK}; default {FULL})")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m],
                        help="comma-separated, e.g. equal,pcgrad,pcgrad@representation "
                             "(default: every config and @representation variant)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, help="untimed steps before them")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "scenes")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "balancing.json")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: where the --methods spend their steps "
                             "(cProfile, top functions of the project, torchjd, cvxpy)")
    args = parser.parse_args()
    for method in args.methods or []:
        try:
            balancer_args(method)
        except ValueError as error:
            parser.error(str(error))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda: no CUDA device available")
        return
    if args.profile:
        profile(args.device, args.methods or [BASELINE], args.data_root)
        return
    result = run(args.quick, args.device, args.methods, rounds=args.rounds, steps=args.steps,
                 warmup=args.warmup, data_root=args.data_root)
    result["command"] = " ".join(["python", *sys.argv])
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
