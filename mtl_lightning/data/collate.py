"""Batching of multi-task samples into ``{"image", "targets", "has", "meta"}``.

Dense targets (class indices, masks) are stacked; detection targets stay a list of
``{"boxes", "labels"}`` (one per image, any number of objects). tv_tensors are unwrapped to
plain tensors so the model never pays for the subclass dispatch.
"""

from __future__ import annotations

from typing import Any

import torch


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    return value


def collate_multitask(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate samples that all carry the same task keys."""
    first = samples[0]
    batch: dict[str, Any] = {
        "image": torch.stack([_plain(s["image"]) for s in samples]),
        "meta": [s.get("meta", {}) for s in samples],
    }
    targets: dict[str, Any] = {}
    for task, value in first.get("targets", {}).items():
        values = [_plain(s["targets"][task]) for s in samples]
        targets[task] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    batch["targets"] = targets
    batch["has"] = {
        task: torch.tensor([bool(s["has"][task]) for s in samples])
        for task in first.get("has", {})
    }
    return batch
