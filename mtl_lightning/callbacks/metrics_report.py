"""At the end of validation and test: a per-task table in the console and ``metrics.json``.

``metrics.json`` in the run directory is a flat JSON object of every final
``{stage}/{task}/{metric}`` value logged so far (train, val and test), rewritten atomically
after each validation and test so that later tools (``compare``, notebooks) can read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

METRICS_FILE = "metrics.json"


def run_directory(trainer: Trainer) -> Path:
    """Where this run writes its files (config.yaml, metrics.json, checkpoints, logs).

    The same folder as ``trainer.log_dir``, found without its broadcast: callers run on rank 0
    only (``rank_zero_only``), and a collective call there hangs a DDP run.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(logger.log_dir)
    return Path(getattr(logger, "save_dir", None) or trainer.default_root_dir)


def _is_metric_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 3 and parts[0] in ("train", "val", "test")


class MetricsReport(Callback):
    """Writes ``metrics.json`` and prints a compact table per stage.

    Args:
        print_table: print the table to the console (rank 0 only).
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, "test")

    @rank_zero_only
    def _report(self, trainer: Trainer, stage: str) -> None:
        values = {
            key: float(value) for key, value in trainer.callback_metrics.items()
            if _is_metric_key(key) and value.numel() == 1
        }
        path = run_directory(trainer) / METRICS_FILE
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(dict(sorted(merged.items())), indent=2))
        os.replace(partial, path)
        if self.print_table:
            Console(width=120).print(metrics_table(values, stage, trainer.current_epoch))


def metrics_table(values: dict[str, float], stage: str, epoch: int) -> Table:
    """One row per task: its metrics as ``name value`` pairs, loss last."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/")
        if parts[0] != stage or parts[1:3] == ["mtl", "weight"]:
            continue
        rows.setdefault(parts[1], {})["/".join(parts[2:])] = value
    table = Table(title=f"{stage} metrics (epoch {epoch})", title_justify="left")
    table.add_column("task", style="bold")
    table.add_column("metrics")
    for task in sorted(rows, key=lambda t: (t == "mtl", t)):
        metrics = sorted(rows[task], key=lambda m: (m == "loss", m))
        table.add_row(task, "  ".join(f"{m} {rows[task][m]:.4f}" for m in metrics))
    return table
