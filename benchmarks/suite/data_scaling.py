"""How the data side grows with the data set: ``scaling``'s ``data_<n>_cache_<on|off>``
entries.

For each training-set size of ``scaling_data_sizes`` (a Scenes set of its own, generated
once into a scratch folder) and each setting of ``data.cache_samples``, with the config's
loader (workers, batch size, transforms):

- ``cache_setup_s``: making the training loader the first time (with the cache: decoding
  the split, after the memory-budget check of ``data.cache_budget``);
- ``cache_mb``: the megabytes the cache holds (0 without it): it grows linearly with the
  set, which is what ``data.cache_budget`` estimates before decoding;
- ``epoch_s`` and ``per_sample_ms``: reading one epoch of the training loader (medians
  over rounds; the first epoch, which starts the persistent worker, is not timed).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from mtl_lightning.data.containers import tensor_bytes

from .common import build_cli, spread
from .settings import Settings


def data_args(root: Path, size: int, cache: bool) -> list[str]:
    return [f"--data.init_args.root={root}", f"--data.init_args.num_train={size}",
            "--data.init_args.num_val=8", "--data.init_args.num_test=8",
            f"--data.init_args.cache_samples={str(cache).lower()}"]


def epoch_seconds(loader: Any) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def data_size_scaling(settings: Settings, device: str, config: Path, args: list[str],
                      folder: Path) -> dict[str, Any]:
    """The data-size entries of ``scaling`` (module docstring)."""
    results: dict[str, Any] = {}
    for size in settings.scaling_data_sizes:
        root = folder / f"scenes_{size}"
        for cache in (False, True):  # the first builds the set: uncached, nothing to share
            cli = build_cli(*args, *data_args(root, size, cache), config=config,
                            device=device)
            start = time.perf_counter()
            loader = cli.datamodule.train_dataloader()
            setup = time.perf_counter() - start
            dataset = cli.datamodule.datasets["train"]
            held = tensor_bytes(dataset._cache) if getattr(dataset, "_cache", None) else 0
            epoch_seconds(loader)  # starts the persistent worker
            epochs = [epoch_seconds(loader) for _ in range(max(1, settings.rounds - 2))]
            results[f"data_{size}_cache_{'on' if cache else 'off'}"] = {
                "samples": size, "cache_setup_s": setup, "cache_mb": held / 2**20,
                "epoch_s": spread(epochs),
                "per_sample_ms": 1e3 * statistics.median(epochs) / size,
            }
            del loader, cli
    return results
