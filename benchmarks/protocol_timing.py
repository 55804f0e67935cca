"""How long will a protocol take? Its training steps timed on full-size synthetic data.

    python benchmarks/protocol_timing.py [--protocols nyuv2_resnet50 ...] [--steps 5]
        [--warmup 1] [--device cpu|cuda] [--epoch] [--full-counts] [--workdir DIR]
        [--json protocol_timing.json] [--markdown protocol_timing.md]

For each protocol config (``configs/experiment/<benchmark>_<setup>.yaml``) it writes random
data of the benchmark's real image shape and file formats in the reader's exact layout
(:mod:`mtl_lightning.data.benchmarks.synthetic`), then runs ``warmup + steps`` training
steps of the protocol as configured (model, batch size, image size, precision; no pretrained
weights, no validation) in a process of its own, and reports the median seconds per step
(its spread), images per second, the process's peak resident memory (and the GPU's peak
allocation on ``cuda``), and projects an epoch and the whole run from the real training set
size (``REAL_SHAPES``) and the protocol's epochs. ``--epoch`` times one whole epoch of the
real number of training images instead (written in full; on a GPU: NYUv2's 795 images).

Only as many samples as the steps read are written unless ``--full-counts`` (or
``--epoch``): the real counts of BDD100K (70k frames) need about 20 GB. The data are random,
so the loss values mean nothing; the time of a step does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package first
from suite.common import REPO, StepTimer, build_cli, machine, quiet, spread

from mtl_lightning.data.benchmarks.synthetic import (
    REAL_SHAPES,
    write_bdd100k,
    write_mtan,
    write_nyud,
    write_pascal_context,
)

#: protocol -> its benchmark (a key of REAL_SHAPES)
PROTOCOLS = {
    "nyuv2_resnet50": "nyuv2",
    "cityscapes_resnet50": "cityscapes",
    "nyud_hrnet18": "nyud",
    "pascal_context_resnet": "pascal_context",
    "bdd100k_yolop": "bdd100k",
}


def protocol_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / "experiment" / f"{name}.yaml").read_text())


def write_benchmark(benchmark: str, root: Path, counts: dict[str, int]) -> Path:
    """Synthetic data of ``benchmark``'s real image shape in its reader's layout."""
    size, _ = REAL_SHAPES[benchmark]
    if benchmark == "nyuv2":
        return write_mtan(root, counts, size)
    if benchmark == "cityscapes":
        return write_mtan(root, counts, size, ("label_7", "depth"), classes=7)
    if benchmark == "nyud":
        return write_nyud(root, counts, size)
    if benchmark == "pascal_context":
        return write_pascal_context(root, counts, size)
    return write_bdd100k(root, counts, size)


def run_one(name: str, root: Path, steps: int | None, warmup: int, device: str) -> dict:
    """Time ``name``'s steps on the data at ``root`` in this process (``steps`` None: one
    epoch of what is there)."""
    quiet()
    config = protocol_config(name)
    precision = str(config["trainer"].get("precision", "32-true"))
    limit = ["--trainer.max_epochs=1"] if steps is None else [
        f"--trainer.max_steps={warmup + steps + 1}"]
    cli = build_cli(f"--data.init_args.root={root}", "--model.pretrained=false",
                    "--trainer.limit_val_batches=0", f"--trainer.precision={precision}",
                    *limit,
                    config=REPO / "configs" / "experiment" / f"{name}.yaml", device=device)
    timer = StepTimer(sync=device == "cuda")
    cli.trainer.callbacks.append(timer)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - start
    measured = len(timer.starts) - warmup - 1 if steps is None else steps
    times = timer.step_times(warmup, measured)
    result = {"steps": len(times), "seconds_per_step": spread(times), "fit_seconds": wall,
              "batch_size": int(cli.datamodule.batch_size),
              "image_size": list(config["data"]["init_args"]["image_size"])
              if isinstance(config["data"]["init_args"]["image_size"], list)
              else config["data"]["init_args"]["image_size"],
              "precision": precision,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if steps is None:
        result["epoch_seconds"] = wall
        result["epoch_images"] = len(cli.datamodule.datasets["train"])
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure(name: str, workdir: Path, steps: int | None, warmup: int, device: str,
            full_counts: bool) -> dict:
    """Write ``name``'s data and time it in a child process (so that its peak memory is
    its own)."""
    benchmark = PROTOCOLS[name]
    config = protocol_config(name)
    batch = int(config["data"]["init_args"]["batch_size"])
    _, real = REAL_SHAPES[benchmark]
    train = real["train"] if full_counts or steps is None else min(
        real["train"], (warmup + steps + 2) * batch)
    root = workdir / benchmark
    if not (root / ".complete").exists() or json.loads(
            (root / ".complete").read_text()) != train:
        started = time.perf_counter()
        write_benchmark(benchmark, root, {"train": train, "val": 1})
        (root / ".complete").write_text(json.dumps(train))
        print(f"{name}: wrote {train} synthetic {benchmark} samples in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    command = [sys.executable, __file__, "--one", name, "--root", str(root), "--warmup",
               str(warmup), "--device", device, "--steps", "epoch" if steps is None else str(steps)]
    output = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if output.returncode != 0:
        raise SystemExit(f"{name} failed:\n{output.stderr[-3000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    steps_per_epoch = math.ceil(real["train"] / batch)
    median = result["seconds_per_step"]["median"]
    epochs = int(config["trainer"]["max_epochs"])
    result.update({"benchmark": benchmark, "train_images": real["train"],
                   "images_per_second": batch / median,
                   "projected_epoch_hours": median * steps_per_epoch / 3600,
                   "projected_run_hours": median * steps_per_epoch * epochs / 3600,
                   "epochs": epochs})
    return result


def markdown(results: dict[str, dict], device: str, about: dict[str, Any]) -> str:
    lines = [f"Training steps on {device} ({about.get('gpu') or about['cpu']}, "
             f"{about['threads']} threads, torch {about['torch']}); synthetic data of the real "
             "shapes; projections = median step x real steps per epoch (x epochs).", "",
             "| protocol | batch | input | precision | s/step (median, min-max) | img/s | "
             "peak RSS MB | peak GPU MB | projected epoch h | projected run h |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        step = r["seconds_per_step"]
        size = r["image_size"]
        size = f"{size[0]}x{size[1]}" if isinstance(size, list) else f"{size}x{size}"
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        lines.append(
            f"| {name} | {r['batch_size']} | {size} | {r['precision']} | "
            f"{step['median']:.2f} ({step['min']:.2f}-{step['max']:.2f}, n={r['steps']}) | "
            f"{r['images_per_second']:.3g} | {r['peak_rss_mb']:.0f} | {gpu} | "
            f"{r['projected_epoch_hours']:.2f} | {r['projected_run_hours']:.0f} "
            f"({r['epochs']} ep) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="*", default=list(PROTOCOLS),
                        choices=list(PROTOCOLS))
    parser.add_argument("--steps", default="5", help="timed steps, or 'epoch'")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epoch", action="store_true", help="time one whole epoch")
    parser.add_argument("--full-counts", action="store_true",
                        help="write the real number of training images")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = None if args.epoch or args.steps == "epoch" else int(args.steps)
    if args.one is not None:  # the child: time one protocol, print its JSON
        print(json.dumps(run_one(args.one, args.root, steps, args.warmup, args.device)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mtl-protocols-"))
    results = {}
    for name in args.protocols:
        results[name] = measure(name, workdir, steps, args.warmup, args.device,
                                args.full_counts)
        print(f"{name}: {results[name]['seconds_per_step']['median']:.2f} s/step",
              file=sys.stderr)
    about = machine(args.device)
    table = markdown(results, args.device, about)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": about, "device": args.device,
                                         "results": results}, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
