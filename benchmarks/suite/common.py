"""What every benchmark shares: the machine's description, medians with their spread, the
project's config turned into objects, a callback that times Lightning's steps, a loader of
batches kept in memory, and a sampler of the resident set size.

``benchmarks/`` is a folder of scripts, not a package: a script puts the folder on
``sys.path`` and imports ``suite.common``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningDataModule

from mtl_lightning.cli import MultiTaskCLI
from mtl_lightning.module import MultiTaskModule

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
GPU_TRAINER = REPO / "configs" / "trainer" / "gpu.yaml"


# ------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """CPU model, torch threads and version, and the GPU's name on ``cuda``."""
    about: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                             "torch": torch.__version__}
    if device == "cuda":
        about["gpu"] = torch.cuda.get_device_name()
    return about


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def quiet() -> None:
    """Lightning's per-fit banners and known-harmless warnings would drown the table."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for message in (".*LightningCLI's args parameter.*", ".*does not have many workers.*",
                    ".*no `val_dataloader`.*", ".*LeafSpec.*", ".*not DPP.*",
                    ".*Precision bf16-mixed is not supported by the model summary.*"):
        warnings.filterwarnings("ignore", message=message)


# ------------------------------------------------------------------------------- config
def build_cli(*args: str, config: Path = DEFAULT_CONFIG, device: str = "cpu",
              logger: bool = False, scratch: str | None = None) -> MultiTaskCLI:
    """The config's trainer, model and data module (prepared and set up for fit), via the
    project's own CLI so that every default and link applies. ``args`` are more CLI
    arguments (``--config`` files, overrides); on ``cuda`` the GPU trainer file is added.
    Without ``logger`` the configured logger is switched off."""
    scratch = scratch or tempfile.mkdtemp(prefix="mtl-bench-")
    arguments = ["--config", str(config), "--trainer.default_root_dir", scratch]
    if device == "cuda":
        arguments += ["--trainer", str(GPU_TRAINER)]
    if not logger:
        arguments += ["--trainer.logger", "false"]
    cli = MultiTaskCLI(MultiTaskModule, LightningDataModule, subclass_mode_data=True,
                       run=False, args=[*arguments, *args])
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli


def batches_in_memory(loader: Any, count: int, device: str) -> list[dict]:
    """The first ``count`` batches of ``loader`` (real transforms and collation), on
    ``device``."""
    iterator = iter(loader)
    batches = []
    for _ in range(count):
        try:
            batches.append(next(iterator))
        except StopIteration:
            break
    return [move_data_to_device(b, torch.device(device)) for b in batches]


def autocast_for(precision: str, device: str) -> AbstractContextManager:
    """The autocast context of a Lightning precision setting (``bf16-mixed``,
    ``16-mixed``, ``32``...) on ``device``."""
    if precision.startswith("bf16"):
        return torch.autocast(device, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device, dtype=torch.float16)
    return nullcontext()


# ------------------------------------------------------------------------------ timing
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(function: Callable[[int], Any], calls: int, warmup: int,
               device: str) -> list[float]:
    """Wall time of each of ``calls`` calls ``function(i)`` after ``warmup`` untimed ones,
    in seconds (the device is synchronised around each call)."""
    for i in range(warmup):
        function(i)
    times = []
    for i in range(warmup, warmup + calls):
        synchronize(device)
        start = time.perf_counter()
        function(i)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    """Wall time of every batch start (after a device sync): consecutive differences are
    whole steps, including the loader and everything Lightning and the module run after
    the optimizer step."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int, steps: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:warmup + steps],
                                      self.starts[warmup + 1:warmup + steps + 1])]


class InMemoryBatches:
    """A few real batches, cycled ``length`` times: a train loader that costs nothing."""

    def __init__(self, batches: list[dict], length: int) -> None:
        self.batches, self.length = batches, length

    def __iter__(self) -> Iterator[dict]:
        return (self.batches[i % len(self.batches)] for i in range(self.length))

    def __len__(self) -> int:
        return self.length


# ------------------------------------------------------------------------------ memory
class RssSampler:
    """Peak resident set size of this process, sampled by a thread, in bytes."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def release_freed_memory() -> None:
    """Collect garbage and return freed heap to the system (glibc), so that RSS means live."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
