"""The trivial predictors of the dense tasks, scored with the tasks' own metrics.

A depth or normals model is only worth something if it beats predicting one value for every
pixel: the training set's mean depth (over valid pixels) and its mean normal (the normalised
mean of the valid unit vectors). This script computes both on a data config's training split
and scores them on its validation and test splits with the metrics the tasks log, so a
trained run's ``metrics.json`` can be read against them.

    python benchmarks/dense_baselines.py [--config configs/default.yaml
        --config configs/experiment/dense.yaml] [--json benchmarks/results/dense_baselines.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from suite.common import REPO, build_cli, quiet

from mtl_lightning.tasks.depth import DepthTask, depth_targets
from mtl_lightning.tasks.normals import NormalsTask, valid_normals

DENSE_CONFIG = REPO / "configs" / "experiment" / "dense.yaml"


def training_means(loader: Any) -> dict[str, torch.Tensor]:
    """The mean depth over valid pixels and the normalised mean of the valid normals."""
    depth_sum = depth_pixels = 0.0
    normal_sum = torch.zeros(3, dtype=torch.float64)
    for batch in loader:
        targets, has = batch["targets"], batch["has"]
        if "depth" in targets:
            depth = depth_targets(targets["depth"][has["depth"]])
            depth_sum += float(depth[depth > 0].double().sum())
            depth_pixels += float((depth > 0).sum())
        if "normals" in targets:
            normals = targets["normals"][has["normals"]].double()
            valid = valid_normals(normals)
            unit = torch.nn.functional.normalize(normals, dim=1)
            normal_sum += unit.permute(0, 2, 3, 1)[valid].sum(0)
    return {"depth": torch.tensor(depth_sum / max(depth_pixels, 1.0)),
            "normals": torch.nn.functional.normalize(normal_sum, dim=0).float()}


def score(loader: Any, means: dict[str, torch.Tensor]) -> dict[str, float]:
    """The tasks' metrics of the constant predictions on ``loader``'s samples."""
    tasks = {"depth": DepthTask(), "normals": NormalsTask()}
    metrics = {name: task.build_metrics("test") for name, task in tasks.items()}
    for batch in loader:
        for name, task in tasks.items():
            if name not in batch["targets"]:
                continue
            target = batch["targets"][name]
            size = (len(target), *target.shape[-2:])
            if name == "depth":
                prediction = means["depth"].expand(size).float()
            else:
                prediction = means["normals"][None, :, None, None].expand(
                    size[0], 3, *size[1:]).float()
            task.update_metrics(metrics[name], prediction, target, batch["has"][name])
    return {f"{name}/{metric}": float(value)
            for name, task in tasks.items()
            for metric, value in task.compute_metrics(metrics[name]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", type=Path, default=None,
                        help="config files (default: the default job + experiment/dense.yaml)")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "dense_baselines.json")
    args = parser.parse_args()
    quiet()
    configs = args.config or [REPO / "configs" / "default.yaml", DENSE_CONFIG]
    extra = [item for path in configs[1:] for item in ("--config", str(path))]
    data = build_cli(*extra, config=configs[0]).datamodule
    means = training_means(data.train_dataloader())
    result: dict[str, Any] = {"mean_depth": float(means["depth"]),
                              "mean_normal": means["normals"].tolist()}
    for split in ("val", "test"):
        if data.has_split(split):
            loader = data.val_dataloader() if split == "val" else data.test_dataloader()
            result[split] = score(loader, means)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
