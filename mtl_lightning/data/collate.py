"""Batching of multi-task samples into ``{"image", "targets", "has", "meta"}``.

Dense targets (class indices, masks) are stacked; detection targets stay a list of
``{"boxes", "labels", ...}`` (one per image, any number of objects), as a :class:`TargetList`.
tv_tensors are unwrapped to plain tensors so the model never pays for the subclass dispatch.

Why :class:`TargetList`: a loader worker hands every tensor of a batch to the main process
through its own shared-memory file descriptor, one socket round trip each; with three
tensors per image those round trips were a large share of a validation epoch
(docs/performance.md). A TargetList crosses the process boundary as one tensor per key and is
split back into per-image views on arrival, so the receiving code sees the same list of dicts.
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


class TargetList(list):
    """Per-image target dicts (``[{"boxes": [N_i, 4], "labels": [N_i], ...}, ...]``) that are
    pickled packed: each key's tensors concatenated along the first dimension, plus the
    per-image lengths. Unpickling splits them back into views, one dict per image. A list
    that cannot be packed (differing keys, dtypes or shapes, non-tensors, scalars) is
    pickled as a plain list of its items."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        packed = _pack(self)
        if packed is None:
            return (TargetList, (list(self),))
        return (_unpack, packed)


def _pack(items: list[Any]) -> tuple[list[str], list[torch.Tensor], list[list[int]]] | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    keys = list(items[0])
    if any(list(item) != keys for item in items):
        return None
    packed, lengths = [], []
    for key in keys:
        values = [item[key] for item in items]
        first = values[0]
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.dtype == first.dtype
                   and v.shape[1:] == first.shape[1:] for v in values):
            return None
        packed.append(torch.cat(values))
        lengths.append([len(v) for v in values])
    return keys, packed, lengths


def _unpack(keys: list[str], packed: list[torch.Tensor],
            lengths: list[list[int]]) -> TargetList:
    parts = [tensor.split(sizes) for tensor, sizes in zip(packed, lengths)]
    return TargetList(dict(zip(keys, values)) for values in zip(*parts))


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
        targets[task] = (torch.stack(values) if isinstance(value, torch.Tensor)
                         else TargetList(values))
    batch["targets"] = targets
    batch["has"] = {
        task: torch.tensor([bool(s["has"][task]) for s in samples])
        for task in first.get("has", {})
    }
    return batch
