"""What a W&B run needs besides the metrics: best-value summaries, the config, model sizes.

At the start of ``fit`` (also ``validate`` and ``test``), with a W&B logger, this callback

- defines summaries (``define_metric``) so that the runs table and the run overview show the
  best validation value of each task's headline metric (``max``, or ``min`` for a metric that
  declares ``higher_is_better=False``) and of ``val/mtl/score``, and the lowest validation
  losses, next to the last values;
- writes the resolved CLI config (``config.yaml`` of the run directory, flattened to the
  CLI's dotted option names such as ``model.lr``, the same names a sweep uses) into the run
  config;
- writes the parameter counts ``params/total``, ``params/<module>`` (``backbone``, ``neck``,
  ...) and ``params/head/<task>`` into the run config. They go to every logger (the CSV
  logger keeps them in ``hparams.yaml``), so a run without W&B has them too;
- stores the W&B run id in ``<run dir>/wandb_id.txt``, so that ``fit --ckpt_path`` of a
  checkpoint of this run continues the same W&B run (see :mod:`mtl_lightning.loggers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.loggers import WANDB_ID_FILE

#: Lightning's WandbLogger plots every metric against this step.
STEP_METRIC = "trainer/global_step"
#: The file LightningCLI's SaveConfigCallback writes in the run directory.
CONFIG_FILE = "config.yaml"


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Parameter counts: ``params/total``, ``params/head/<task>`` for each module of
    ``module.tasks``, and one ``params/<child>`` per other sub-module with parameters. The
    parts of ``module.architecture`` are counted one by one (``backbone`` and ``neck`` for
    hard sharing; ``backbones``, ``stitches``, ``attention``, ... for the others)."""
    counts = {"params/total": sum(p.numel() for p in module.parameters())}
    children = list(module.named_children())
    for name, child in children:
        if name == "tasks" and isinstance(child, nn.ModuleDict):
            for task, head in child.items():
                counts[f"params/head/{task}"] = sum(p.numel() for p in head.parameters())
            continue
        if name == "architecture":
            children += list(child.named_children())
            continue
        size = sum(p.numel() for p in child.parameters())
        if size:
            counts[f"params/{name}"] = size
    return counts


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.lr": 0.003, ...}``: the CLI's own option names."""
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def summary_definitions(pl_module: LightningModule) -> dict[str, str]:
    """Metric key -> W&B summary (``max,last`` or ``min,last``) for the validation keys that
    judge a run: each task's headline metric and loss, ``val/mtl/score`` and ``val/mtl/loss``."""
    definitions = {"val/mtl/score": "max,last", "val/mtl/loss": "min,last"}
    # the directions the metrics declare (MultiTaskModule.lower_is_better), else the task's
    directions = (pl_module.lower_is_better()
                  if callable(getattr(pl_module, "lower_is_better", None)) else {})
    for name, task in getattr(pl_module, "tasks", {}).items():
        headline = getattr(task, "headline_metric", None)
        if headline:
            lower = headline in directions.get(name, getattr(task, "lower_is_better", ()))
            definitions[f"val/{name}/{headline}"] = "min,last" if lower else "max,last"
        definitions[f"val/{name}/loss"] = "min,last"
    return definitions


class WandbSummaries(Callback):
    """Summaries, config, parameter counts and the run id of a W&B run.

    Args:
        define_summaries: define the best-value summaries of the validation metrics.
        log_config: put the run's resolved ``config.yaml`` into the W&B run config.
        log_parameter_counts: put the parameter counts into every logger's hyperparameters.
    """

    def __init__(
        self, define_summaries: bool = True, log_config: bool = True,
        log_parameter_counts: bool = True,
    ) -> None:
        self.define_summaries = define_summaries
        self.log_config = log_config
        self.log_parameter_counts = log_parameter_counts
        self._configured: set[str] = set()  # W&B runs already set up (fit, then test)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._configure(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._configure(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._configure(trainer, pl_module)

    @rank_zero_only
    def _configure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        run = wandb_loggers[0].experiment if wandb_loggers else None
        key = str(getattr(run, "id", None))
        if key in self._configured:
            return
        self._configured.add(key)
        if self.log_parameter_counts:
            counts = parameter_counts(pl_module)
            for logger in trainer.loggers:
                logger.log_hyperparams(counts)
        if run is None:
            return
        folder = run_directory(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / WANDB_ID_FILE).write_text(f"{run.id}\n")
        if self.define_summaries:
            run.define_metric(STEP_METRIC)
            for name, summary in summary_definitions(pl_module).items():
                run.define_metric(name, step_metric=STEP_METRIC, step_sync=True,
                                  summary=summary)
        config = _read_config(folder / CONFIG_FILE)
        if self.log_config and config:
            run.config.update(flatten_config(config), allow_val_change=True)


def _read_config(path: Path) -> dict[str, Any]:
    """The run's saved CLI config (empty without one, e.g. outside the CLI)."""
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}
