"""Which timm backbone families work end to end, their size and CPU training speed.

    python benchmarks/backbone_coverage.py [--families resnet vit ...] [--image-size 128]
        [--steps 3] [--exporter legacy] [--update]
        [--json benchmarks/results/backbone_coverage.json]

For the smallest variant of each family in :data:`FAMILIES`, on the smoke config's Scenes
data at ``--image-size`` px: whether the model **builds**, **trains** (two Lightning training
steps), **validates** (a finite ``val/mtl/score``), **predicts** (post-processed predictions
for a batch) and **exports** (ONNX through ``mtl-lightning export``, run by onnxruntime when it
is installed, agreeing with eager PyTorch); its parameters; and its CPU training images/s
(the median of ``--steps`` timed steps of the suite's plain training loop, batch 8, after one
warm-up step; the fastest step too, the closest to the model's own cost on a shared CPU).
ONNX goes through PyTorch's TorchScript-based exporter by default (quicker to
run; ``--exporter dynamo`` checks the other); where it fails the other one is tried, and the
note says so. ``--update`` re-measures the families named and
keeps the other rows of the JSON file. A stage that fails is recorded with its one-line reason
and the later stages are skipped; the seconds of each stage are recorded too.
``--model.image_size`` is set to the image size for every family (backbones that take any size
ignore it). Prints a markdown table (Lightning's own output goes to stderr); writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import REPO, batches_in_memory, build_cli, machine, quiet, time_calls
from suite.plain_loop import PlainLoop

SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"
STAGES = ("builds", "trains", "validates", "predicts", "exports")

#: family -> (smallest timm variant, extra CLI arguments it needs)
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "resnet": ("resnet10t", []),
    "efficientnet": ("efficientnet_b0", []),
    "mobilenetv3": ("mobilenetv3_small_050", []),
    "regnet": ("regnetx_002", []),
    "convnext": ("convnext_atto", []),
    "swin": ("swin_tiny_patch4_window7_224", []),
    "maxvit": ("maxvit_pico_rw_256", []),
    "hiera": ("hiera_tiny_224", []),
    "fastvit": ("fastvit_t8", []),
    "efficientformer": ("efficientformer_l1", []),
    "levit": ("levit_128s", []),
    "edgenext": ("edgenext_xx_small", []),
    "vit": ("vit_tiny_patch16_224", []),
    "deit": ("deit_tiny_patch16_224", []),
    "eva02": ("eva02_tiny_patch14_224", ['--model.backbone_kwargs={"patch_size": 16}']),
}


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]


def _export_matches(checkpoint: Path, onnx_file: Path, image_size: int, batch: dict,
                    exporter: str) -> None:
    """Export through the project's exporter; compare onnxruntime with eager when present."""
    import torch

    from mtl_lightning.export import InferenceModel, export, load_module

    export(checkpoint, onnx_file, postprocess=False, image_size=image_size, exporter=exporter)
    try:
        import onnxruntime
    except ImportError:
        return
    image = batch["image"][:2].cpu()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy()})
    model = InferenceModel(load_module(checkpoint), postprocess=False).eval()
    with torch.no_grad():
        expected = model(image)
    for value, reference in zip(got, expected):
        if not torch.allclose(torch.from_numpy(value), reference, atol=1e-3, rtol=1e-3):
            raise ValueError("the ONNX outputs differ from eager PyTorch")


def measure(family: str, name: str, extra: list[str], image_size: int, steps: int,
            exporter: str, scratch: Path) -> dict[str, Any]:
    """One family's row: stages passed, the first failure, parameters and img/s."""
    import torch

    row: dict[str, Any] = {"family": family, "model": name, "options": extra,
                           **dict.fromkeys(STAGES, False), "failure": None,
                           "params_m": None, "train_images_per_s": None}
    stage = "builds"
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    row["stage_seconds"] = seconds

    def passed(name: str) -> None:
        row[name] = True
        seconds[name] = round(time.perf_counter() - start - sum(seconds.values()), 1)

    try:
        cli = build_cli(
            f"--model.backbone={name}", f"--model.image_size={image_size}", *extra,
            f"--data.init_args.image_size={image_size}", f"--data.init_args.root={scratch}/data",
            "--data.init_args.num_train=32", "--data.init_args.num_val=8",
            "--data.init_args.batch_size=8",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            "--test_after_fit=false", "--overlays.num_images=0", "--trainer.precision=32",
            config=SMOKE_CONFIG, scratch=str(scratch / family))
        model = cli.model
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        passed("builds")
        stage = "trains"
        cli.trainer.fit(model, datamodule=cli.datamodule)
        if cli.trainer.global_step < 2:
            raise RuntimeError(f"only {cli.trainer.global_step} training steps ran")
        passed("trains")
        stage = "validates"
        score = cli.trainer.callback_metrics.get("val/mtl/score")
        if score is None or not math.isfinite(float(score)):
            raise RuntimeError(f"val/mtl/score is {score}")
        passed("validates")
        stage = "predicts"
        batch = next(iter(cli.datamodule.val_dataloader()))
        model.eval()
        with torch.no_grad():
            predictions = model.predict_tasks(batch["image"])
        if len(predictions) != len(batch["image"]):
            raise RuntimeError("a prediction is missing")
        passed("predicts")
        stage = "exports"
        checkpoint = scratch / family / "model.ckpt"
        cli.trainer.save_checkpoint(checkpoint)
        try:
            _export_matches(checkpoint, scratch / family / "model.onnx", image_size, batch,
                            exporter)
        except Exception as error:  # the other exporter may manage: say which one did
            other = "dynamo" if exporter == "legacy" else "legacy"
            _export_matches(checkpoint, scratch / family / "model.onnx", image_size, batch,
                            other)
            row["export_note"] = f"{exporter} exporter: {_reason(error)}; {other}: ok"
        passed("exports")
    except Exception as error:  # a coverage table records every failure and goes on
        row["failure"] = f"{stage}: {_reason(error)}"
    if row["trains"]:
        batches = batches_in_memory(cli.datamodule.train_dataloader(), 2, "cpu")
        loop = PlainLoop(model, "32", "cpu")
        times = time_calls(lambda i: loop.step(batches[i % len(batches)]), steps, 1, "cpu")
        times.sort()
        row["train_images_per_s"] = len(batches[0]["image"]) / times[len(times) // 2]
        # The fastest step: on a shared CPU, the closest to what the model costs alone.
        row["train_images_per_s_best"] = len(batches[0]["image"]) / times[0]
    row["seconds"] = time.perf_counter() - start
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    mark = {True: "yes", False: "no"}
    lines = ["| family | model | " + " | ".join(STAGES)
             + " | params (M) | train img/s (median) | (fastest step) |",
             "| --- | --- |" + " :-: |" * len(STAGES) + " --: | --: | --: |"]
    for row in rows:
        options = f" ({' '.join(row['options'])})" if row["options"] else ""
        params = f"{row['params_m']:.1f}" if row["params_m"] is not None else "-"
        speeds = [row.get("train_images_per_s"), row.get("train_images_per_s_best")]
        cells = [row["family"], f"`{row['model']}`{options}",
                 *(mark[row[s]] for s in STAGES), params,
                 *(f"{v:.1f}" if v is not None else "-" for v in speeds)]
        lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {r['family']} (`{r['model']}`): {r['failure'] or r.get('export_note')}"
                for r in rows if r["failure"] or r.get("export_note")]
    return "\n".join(lines + (["", *failures] if failures else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    parser.add_argument("--update", action="store_true",
                        help="keep the JSON file's rows of the families not measured now")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "backbone_coverage.json")
    args = parser.parse_args()
    quiet()
    old = {}
    if args.update and args.json.is_file():
        old = {r["family"]: r for r in json.loads(args.json.read_text())["families"]}
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mtl-coverage-") as scratch:
        for family in args.families:
            name, extra = FAMILIES[family]
            with contextlib.redirect_stdout(sys.stderr):  # Lightning's own tables
                rows.append(measure(family, name, extra, args.image_size, args.steps,
                                    args.exporter, Path(scratch)))
            print(f"{family}: {rows[-1]['failure'] or 'ok'} ({rows[-1]['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
            # Written after every family: a run cut short keeps what it measured.
            by_family = {**old, **{r["family"]: r for r in rows}}
            result = {"machine": machine("cpu"), "image_size": args.image_size,
                      "steps": args.steps, "exporter": args.exporter,
                      "families": [by_family[f] for f in FAMILIES if f in by_family]}
            args.json.write_text(json.dumps(result, indent=2))
    rows = result["families"]
    print(f"machine: {result['machine']}")
    print(table(rows))


if __name__ == "__main__":
    main()
