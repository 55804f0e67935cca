"""Walks over a sample's nested dicts, lists and tuples: copying the containers and counting
the tensors' bytes (the in-memory sample cache needs both)."""

from __future__ import annotations

from typing import Any

import torch


def copy_containers(value: Any) -> Any:
    """A copy of the dicts, lists and tuples of ``value``; tensors and other leaves are
    shared (the transforms never change a tensor in place)."""
    if isinstance(value, dict):
        return {key: copy_containers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_containers(item) for item in value)
    return value


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested structure of dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


__all__ = ["copy_containers", "tensor_bytes"]
