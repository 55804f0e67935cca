"""Walks over a sample's nested dicts, lists and tuples: copying the containers and counting
the tensors' bytes (the in-memory sample cache needs both). Both use Lightning's
``apply_to_collection``, which rebuilds every container it walks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection


def _same(value: Any) -> Any:
    return value


def copy_containers(value: Any) -> Any:
    """A copy of the dicts, lists and tuples of ``value``; tensors and other leaves are
    shared (the transforms never change a tensor in place)."""
    return apply_to_collection(value, object, _same, wrong_dtype=(Mapping, Sequence))


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested structure of dicts, lists and tuples."""
    sizes: list[int] = []
    apply_to_collection(value, torch.Tensor, lambda t: sizes.append(t.numel() * t.element_size()))
    return sum(sizes)


__all__ = ["copy_containers", "tensor_bytes"]
