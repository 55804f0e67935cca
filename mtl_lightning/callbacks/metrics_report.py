"""At the end of validation and test: a per-task table in the console and ``metrics.json``.

``metrics.json`` in the run directory is a flat JSON object of every final
``{stage}/{task}/{metric}`` value logged so far (train, val and test), rewritten atomically
after each validation and test so that later tools (``compare``, notebooks) can read it.

The numbers reported are those of the model kept. During ``fit`` the ``val/...`` values are
those of the epoch whose checkpoint the checkpoint callback keeps as best (its ``monitor``
and ``mode``; a tie keeps the earlier epoch, as ModelCheckpoint does): the model that
``test_after_fit`` and ``--ckpt_path best`` use. ``kept/val/epoch`` says which epoch that is;
the latest epoch's values are under ``last/val/...`` (``train/...`` is the latest epoch's).
Without a monitored checkpoint, ``val/...`` is the latest epoch. At the end of ``fit`` the
console shows the kept epoch's table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from mtl_lightning.shared.files import write_text_atomically

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


def _monitored(trainer: Trainer) -> tuple[str, str] | None:
    """``(monitor, mode)`` of the checkpoint callback that picks the kept model, if any."""
    checkpoint = trainer.checkpoint_callback
    monitor = getattr(checkpoint, "monitor", None)
    if monitor is None or getattr(checkpoint, "save_top_k", 1) == 0:
        return None
    return monitor, getattr(checkpoint, "mode", "min")


def _improves(value: float, best: float | None, mode: str) -> bool:
    """ModelCheckpoint's rule: strictly better; NaN is never better."""
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


class MetricsReport(Callback):
    """Writes ``metrics.json`` and prints a compact table per stage.

    Args:
        print_table: print the table to the console (rank 0 only).
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_values: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before a resumed run's checkpoint restores the state (load_state_dict).
        self.best_score, self.best_epoch, self.best_values = None, None, {}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, "test")

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.print_table and self.best_epoch is not None:
            monitor = _monitored(trainer)
            best_path = getattr(trainer.checkpoint_callback, "best_model_path", "")
            title = (f"val metrics of the kept model: epoch {self.best_epoch}, best "
                     f"{monitor[0] if monitor else 'score'} {self.best_score:.4f}"
                     + (f" ({Path(best_path).name})" if best_path else ""))
            Console(width=120).print(metrics_table(self.best_values, "val", self.best_epoch,
                                                   title=title))

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_values": dict(self.best_values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_values = dict(state_dict.get("best_values") or {})

    def _kept(self, trainer: Trainer, values: dict[str, float]) -> dict[str, float]:
        """The values to report as ``val/...`` during fit: the best epoch's
        by the checkpoint's monitor, plus this epoch's as ``last/...`` and ``kept/val/epoch``."""
        monitor = _monitored(trainer)
        if monitor is None or trainer.state.fn != "fit" or monitor[0] not in values:
            return values
        epoch_values = {k: v for k, v in values.items() if k.startswith("val/")}
        if _improves(values[monitor[0]], self.best_score, monitor[1]):
            self.best_score, self.best_epoch = values[monitor[0]], trainer.current_epoch
            self.best_values = epoch_values
        last = {f"last/{key}": value for key, value in epoch_values.items()}
        return {**values, **self.best_values, **last, "kept/val/epoch": self.best_epoch}

    @rank_zero_only
    def _report(self, trainer: Trainer, stage: str) -> None:
        values = {
            key: float(value) for key, value in trainer.callback_metrics.items()
            if _is_metric_key(key) and value.numel() == 1
        }
        path = run_directory(trainer) / METRICS_FILE
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(self._kept(trainer, values) if stage == "val" else values)
        write_text_atomically(path, json.dumps(dict(sorted(merged.items())), indent=2))
        if self.print_table:
            Console(width=120).print(metrics_table(values, stage, trainer.current_epoch))


def metrics_table(values: dict[str, float], stage: str, epoch: int,
                  title: str | None = None) -> Table:
    """One row per task: its metrics as ``name value`` pairs, loss last."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/")
        if parts[0] != stage or parts[1:3] == ["mtl", "weight"]:
            continue
        rows.setdefault(parts[1], {})["/".join(parts[2:])] = value
    table = Table(title=title or f"{stage} metrics (epoch {epoch})", title_justify="left")
    table.add_column("task", style="bold")
    table.add_column("metrics")
    for task in sorted(rows, key=lambda t: (t == "mtl", t)):
        metrics = sorted(rows[task], key=lambda m: (m == "loss", m))
        table.add_row(task, "  ".join(f"{m} {rows[task][m]:.4f}" for m in metrics))
    return table
