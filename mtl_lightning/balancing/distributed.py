"""Collectives for balancing under DDP: what must be the same on every process.

torchjd knows nothing of processes, and a method whose weights depend on the losses or on the
task gradients gives a different update on each process unless those inputs are first made
global. These helpers are no-ops in a single process, so the code that calls them reads the
same either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes training together (1 without ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (in place, and returned)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean over processes of several tensors, with one collective for all of them."""
    size = world_size()
    if size == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= size
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out
