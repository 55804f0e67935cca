"""A memory budget for ``data.cache_samples``, checked before a split is decoded.

Caching decodes every sample of a split into memory. On a data set larger than the machine's
memory that would end in the kernel's out-of-memory killer halfway through the decoding,
with no word about why. So before decoding, :func:`check_cache_budget` decodes a few evenly
spaced samples, multiplies their mean size by the number of samples (and by the processes
of this machine that each hold their own cache under DDP), and refuses in one sentence,
naming the options, when the estimate exceeds ``data.cache_budget`` (a fraction of the
memory available now; ``0`` switches the check off).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtl_lightning.data.containers import tensor_bytes

#: The default share of the available memory one split's cache may take.
DEFAULT_CACHE_BUDGET = 0.5
#: Samples decoded to estimate a split's size.
PROBES = 4

#: a reader of one untransformed sample by index, and the number of samples it has
Part = tuple[Callable[[int], Any], int]


class CacheBudgetError(MemoryError):
    """The split would not fit in the memory budget of ``data.cache_samples``."""


def available_memory_bytes() -> int:
    """Memory available to new allocations now (``MemAvailable`` of /proc/meminfo on Linux,
    the free physical pages elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def processes_on_this_machine() -> int:
    """Processes of this machine that each keep a cache (DDP's ``LOCAL_WORLD_SIZE``, else 1)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def estimate_bytes(read: Callable[[int], Any], length: int, probes: int = PROBES) -> int:
    """The bytes of all ``length`` samples of ``read``, from ``probes`` evenly spaced ones."""
    if length <= 0:
        return 0
    count = min(probes, length)
    indices = sorted({round(i * (length - 1) / max(count - 1, 1)) for i in range(count)})
    sizes = [tensor_bytes(read(index)) for index in indices]
    return round(sum(sizes) / len(sizes) * length)


def check_budget(what: str, needed: int, budget: float, available: int) -> None:
    """Refuse when ``needed`` bytes exceed ``budget`` times ``available``."""
    if needed > budget * available:
        mb = 2**20
        raise CacheBudgetError(
            f"data.cache_samples would hold about {needed / mb:,.0f} MB for {what}, more than "
            f"data.cache_budget={budget:g} of the {available / mb:,.0f} MB available; set "
            f"data.cache_samples=false, or raise data.cache_budget (0 switches this check off)."
        )


def check_cache_budget(parts: Sequence[Part], what: str, budget: float,
                       available: int | None = None) -> int:
    """Estimate the cache of ``parts`` (the readers of one split) and refuse, naming the
    options, when it exceeds ``budget`` of the available memory; returns the estimate in
    bytes (0 without a check). ``what`` names the split in the message."""
    if budget < 0:
        raise ValueError(f"data.cache_budget is {budget}; give a fraction of the available "
                         "memory such as 0.5 (0 switches the check off).")
    if budget == 0:
        return 0
    samples = sum(length for _, length in parts)
    needed = sum(estimate_bytes(read, length) for read, length in parts)
    needed *= processes_on_this_machine()
    check_budget(f"{what} ({samples} samples)", needed, budget,
                 available if available is not None else available_memory_bytes())
    return needed
