"""The benchmark suite: what the library costs around the model's own arithmetic, as ratios
measured side by side in one run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--json PATH]
        [--only train_step_overhead,loss_overhead,...] [--config configs/default.yaml]
        [-- CLI OVERRIDES...]

Prints a table (median, min and max over rounds; target; verdict; the machine) and writes
JSON (default ``benchmarks/results/suite[_quick][_cuda].json``) with the top-level keys

============================== ==========================================================
``train_step_overhead``        real Lightning step / plain step (<= 1.15), suite/overheads.py
``loss_overhead``              plain step with real losses / with a trivial loss (<= 1.2)
``mtl_vs_single_inference_speedup``  3 single-task models' time / the MTL model's (>= 2.5)
``loader_vs_step_ratio``       loader samples/s / training samples/s (>= 2), suite/loader.py
``eval_overhead``              validation epoch / its forward passes alone (<= 1.3)
``peer_torchjd_upgrad``        our exact UPGrad step / torchjd's ``mtl_backward`` (<= 0.9),
                               suite/peers.py
``peer_libmtl_step``           our Lightning step / LibMTL's trainer step on the dense tasks,
                               equal weighting (<= 1.0; PCGrad in ``methods``), or why it
                               cannot run (LibMTL absent), suite/peer_libmtl.py
``balancing_overhead``         per method, step time / equal weighting (benchmarks/balancing.py)
``peak_rss_mb``                the default run's peak resident memory, suite/memory.py
``scaling``                    plain step time against image size, number of tasks and
                               data set size (cache on and off), suite/scaling.py
``gpu``                        ``--device cuda``: absolute images/s, GPU busy share, suite/gpu.py
============================== ==========================================================

Every measurement uses the default job's config (``--config``, plus any overrides after
``--``, e.g. ``-- --model.channels_last=false``). ``--quick`` runs fewer rounds and steps
and a subset of balancing methods, in under 5 minutes on 2 CPU cores. ``--device cuda``
runs the same suite on the GPU with bf16-mixed (``configs/trainer/gpu.yaml``) plus the GPU
part; without a GPU it says so and exits 0. Quote medians, read min and max: shared
machines are noisy. The log of what each optimisation bought is ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import balancing
from suite.common import DEFAULT_CONFIG, REPO, machine, quiet
from suite.evaluation import eval_overhead
from suite.gpu import gpu_extras
from suite.inference import mtl_vs_single_inference
from suite.loader import loader_vs_step
from suite.memory import peak_rss
from suite.overheads import loss_overhead, train_step_overhead
from suite.peer_libmtl import peer_libmtl_step
from suite.peers import peer_torchjd_upgrad
from suite.scaling import scaling
from suite.settings import FULL, QUICK, Settings

Measurement = Callable[[Settings, str, Path, list[str]], dict[str, Any]]

#: key -> (measurement, direction of the target: "max" means the ratio must stay below it)
RATIOS: dict[str, tuple[Measurement, str]] = {
    "train_step_overhead": (train_step_overhead, "max"),
    "loss_overhead": (loss_overhead, "max"),
    "mtl_vs_single_inference_speedup": (mtl_vs_single_inference, "min"),
    "loader_vs_step_ratio": (loader_vs_step, "min"),
    "eval_overhead": (eval_overhead, "max"),
    "peer_torchjd_upgrad": (peer_torchjd_upgrad, "max"),
    "peer_libmtl_step": (peer_libmtl_step, "max"),
}


def balancing_overhead(settings: Settings, device: str, config: Path,
                       args: list[str]) -> dict[str, Any]:
    """The balancing benchmark's ratios (it builds the default model itself)."""
    rounds = max(2, settings.rounds - 2)
    result = balancing.run(settings.quick, device, list(settings.balancing_methods or []),
                           rounds=rounds)
    if "skipped" in result:
        return result
    return {method: {key: values[key] for key in ("ratio", "step_ms", "target", "family",
                                                  "error") if key in values}
            for method, values in result["methods"].items()}


OTHERS: dict[str, Measurement] = {
    "balancing_overhead": balancing_overhead,
    "peak_rss_mb": peak_rss,
    "scaling": scaling,
}


def verdict(value: float, target: float, direction: str) -> str:
    ok = value <= target if direction == "max" else value >= target
    return "met" if ok else "NOT met"


#: key -> (its diagnostic ratio, the table's label): where the overhead comes from
DIAGNOSTICS = {
    "train_step_overhead": ("in_memory_ratio", "  Lightning on in-memory batches"),
    "eval_overhead": ("ratio_without_overlays", "  without the prediction overlays"),
}

#: width of the table's name column
W = 42


def table(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}  device: {result['device']}  "
             f"quick: {result['quick']}",
             f"{'measure':<{W}}{'median':>9}{'min':>9}{'max':>9}  target   verdict"]
    for key, (_, direction) in RATIOS.items():
        entry = result.get(key)
        if not isinstance(entry, dict) or "ratio" not in entry:
            continue
        ratio, target = entry["ratio"], entry["target"]
        sign = "<=" if direction == "max" else ">="
        lines.append(f"{key:<{W}}{ratio['median']:>9.3f}{ratio['min']:>9.3f}{ratio['max']:>9.3f}"
                     f"  {sign} {target:<5} {verdict(ratio['median'], target, direction)}")
        for method, part in (entry.get("methods") or {}).items():
            if isinstance(part, dict) and "ratio" in part:
                lines.append(f"{'  ' + method:<{W}}{part['ratio']['median']:>9.3f}"
                             f"{part['ratio']['min']:>9.3f}{part['ratio']['max']:>9.3f}")
        if key in DIAGNOSTICS and DIAGNOSTICS[key][0] in entry:
            name, part = DIAGNOSTICS[key][1], entry[DIAGNOSTICS[key][0]]
            lines.append(f"{name:<{W}}{part['median']:>9.3f}{part['min']:>9.3f}"
                         f"{part['max']:>9.3f}")
    for method, entry in (result.get("balancing_overhead") or {}).items():
        if isinstance(entry, dict) and "ratio" in entry:
            ratio = entry["ratio"]
            target = f"<= {entry['target']}" if entry.get("target") else "-"
            lines.append(f"{'balancing ' + method:<{W}}{ratio['median']:>9.3f}"
                         f"{ratio['min']:>9.3f}{ratio['max']:>9.3f}  {target}")
    if isinstance(result.get("peak_rss_mb"), dict) and "peak_rss_mb" in result["peak_rss_mb"]:
        lines.append(f"{'peak_rss_mb (default run)':<{W}}"
                     f"{result['peak_rss_mb']['peak_rss_mb']:>9.0f}")
    scaling = result.get("scaling") or {}
    reference = next((name for name in scaling if name.startswith("size_")), "")
    for name, entry in scaling.items():
        if isinstance(entry, dict) and "step_ms" in entry:
            step = entry["step_ms"]
            lines.append(f"{'scaling ' + name + ' (ms/step)':<{W}}{step['median']:>9.1f}"
                         f"{step['min']:>9.1f}{step['max']:>9.1f}  "
                         f"x{entry['ratio_to_default']['median']:.2f} of {reference}")
    for name, entry in scaling.items():
        if isinstance(entry, dict) and "per_sample_ms" in entry:
            lines.append(f"{'scaling ' + name + ' (loader ms/sample)':<{W}}"
                         f"{entry['per_sample_ms']:>9.2f}  cache {entry['cache_mb']:.0f} MB "
                         f"in {entry['cache_setup_s']:.1f} s")
    breakdown = (result.get("eval_overhead") or {}).get("breakdown_s") or {}
    lines += [f"{'  validation ' + part + ' (s)':<{W}}{seconds:>9.3f}"
              for part, seconds in breakdown.items()]
    gpu = result.get("gpu") or {}
    for key, value in gpu.items():
        if isinstance(value, dict) and "median" in value:
            lines.append(f"{'gpu ' + key:<{W}}{value['median']:>9.1f}{value['min']:>9.1f}"
                         f"{value['max']:>9.1f}")
        elif isinstance(value, float):
            lines.append(f"{'gpu ' + key:<{W}}{value:>9.3f}")
    lines += [f"{key}: skipped: {value['skipped']}" for key, value in result.items()
              if isinstance(value, dict) and "skipped" in value]
    errors = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
    lines += [f"{key}: FAILED: {error}" for key, error in errors.items()]
    return "\n".join(lines)


def flatten_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys of the ratios hold the median; the details go to ``<key>_details``."""
    result = dict(result)
    for key in RATIOS:
        entry = result.get(key)
        if isinstance(entry, dict) and "ratio" in entry:
            result[f"{key}_details"] = entry
            result[key] = entry["ratio"]["median"]
    rss = result.get("peak_rss_mb")
    if isinstance(rss, dict) and "peak_rss_mb" in rss:
        result["peak_rss_mb_details"] = rss
        result["peak_rss_mb"] = rss["peak_rss_mb"]
    return result


def customised(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with what the command line overrides."""
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("rounds", "steps", "warmup")
                               if getattr(args, k) is not None}
    if args.sizes:
        changes["scaling_sizes"] = tuple(int(size) for size in args.sizes.split(","))
    if args.data_sizes:
        changes["scaling_data_sizes"] = tuple(int(size) for size in args.data_sizes.split(","))
    if args.methods:
        changes["balancing_methods"] = tuple(args.methods.split(","))
    if args.gpu_variants:
        changes["gpu_variants"] = tuple(args.gpu_variants.split(","))
    return dataclasses.replace(settings, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under 5 minutes)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--only", default=None,
                        help=f"comma-separated keys of {', '.join([*RATIOS, *OTHERS, 'gpu'])} "
                        "(gpu on a CPU: the throughput part only)")
    parser.add_argument("--rounds", type=int, help="override the setting's rounds")
    parser.add_argument("--steps", type=int, help="override the setting's timed steps")
    parser.add_argument("--warmup", type=int, help="override the setting's warm-up steps")
    parser.add_argument("--sizes", help="image sizes of the scaling, e.g. 128,256,512")
    parser.add_argument("--data-sizes", help="training-set sizes of the scaling (cache on "
                        "and off), e.g. 100,400")
    parser.add_argument("--methods", help="balancing methods, e.g. equal,pcgrad (default: "
                        "all; with --quick a subset)")
    parser.add_argument("--gpu-variants", help="models of the gpu measurement, e.g. "
                        "default_128px (default: default_128px,resnet50_512px)")
    parser.add_argument("overrides", nargs="*", help="config overrides, after --")
    args = parser.parse_args()
    suffix = ("_quick" if args.quick else "") + ("_cuda" if args.device == "cuda" else "")
    path = args.json or REPO / "benchmarks" / "results" / f"suite{suffix}.json"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; the GPU suite is skipped.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"skipped": "no CUDA device", "device": "cuda"}, indent=2))
        return
    quiet()
    measurements: dict[str, Measurement] = {k: m for k, (m, _) in RATIOS.items()} | OTHERS
    keys = args.only.split(",") if args.only else list(measurements)
    if args.device == "cuda" and not args.only:
        keys.append("gpu")
    unknown = set(keys) - set(measurements) - {"gpu"}
    if unknown:
        parser.error(f"unknown --only keys {sorted(unknown)}; known: {[*measurements, 'gpu']}")
    settings = customised(QUICK if args.quick else FULL, args)
    result: dict[str, Any] = {"device": args.device, "quick": args.quick,
                              "machine": machine(args.device), "config": str(args.config),
                              "overrides": args.overrides, "settings": dataclasses.asdict(settings)}
    measurements["gpu"] = lambda s, d, c, a: gpu_extras(s, d, c, a, lightning_ms(result))
    start = time.perf_counter()
    for key in keys:
        began = time.perf_counter()
        try:
            result[key] = measurements[key](settings, args.device, args.config, args.overrides)
        except Exception as error:  # report it and go on with the rest of the suite
            traceback.print_exc()
            result[key] = {"error": f"{type(error).__name__}: {error}"}
        print(f"[{key}: {time.perf_counter() - began:.0f} s]", file=sys.stderr, flush=True)
        write(path, result, start)  # what is measured is kept, even if a later key hangs
    print(table(result))
    flat = flatten_ratios(result)
    write(path, flat, start)
    print(f"wrote {path} ({flat['seconds']:.0f} s)")


def lightning_ms(result: dict[str, Any]) -> float | None:
    """The median Lightning step of ``train_step_overhead``, where it ran before."""
    entry = result.get("train_step_overhead")
    if isinstance(entry, dict) and "lightning_ms" in entry:
        return entry["lightning_ms"]["median"]
    return None


def write(path: Path, result: dict[str, Any], start: float) -> None:
    result["seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
