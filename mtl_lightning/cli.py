"""The command line: ``mtl-lightning fit|validate|test|predict --config configs/default.yaml``,
and ``mtl-lightning check-data`` (see ``check_data.py``).

A LightningCLI whose data module is chosen by class path and whose model is the
MultiTaskModule. On top of Lightning's CLI it:

- links ``data.task_info`` into ``model.task_info`` (class counts come from the data);
- gives every run its own directory ``<trainer.default_root_dir>/<run_name or time>``
  holding ``config.yaml``, ``metrics.json``, checkpoints, logs and predictions, and prints it;
- always adds a ``checkpoint`` (best by ``val/mtl/score`` and ``last``), a ``report`` (console
  table + metrics.json), ``overlays`` (validation images drawn as PNG and W&B images), a
  ``gradient_conflict`` heatmap (PNG + W&B) and a ``prediction_writer``, each configurable
  under its own key;
- with ``test_after_fit: true``, tests the best checkpoint when ``fit`` ends;
- turns the errors a user can fix (unknown backbone or task, bad option) into one line
  instead of a traceback.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from mtl_lightning.callbacks import (
    GradientConflictHeatmap,
    MetricsReport,
    PredictionOverlays,
    PredictionWriter,
)
from mtl_lightning.module import MultiTaskModule

RUN_DIR_ENV = "MTL_LIGHTNING_RUN_DIR"


def _new_run_dir(base: Path, name: str | None) -> Path:
    """A fresh run directory; shared with DDP child processes through the environment."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and "LOCAL_RANK" in os.environ:  # a DDP child started by Lightning
        return Path(inherited)
    stem = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir, counter = base / stem, 1
    while run_dir.exists():
        counter += 1
        run_dir = base / f"{stem}-{counter}"
    run_dir.mkdir(parents=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


class MultiTaskCLI(LightningCLI):
    """LightningCLI with run directories, linked class information and fixed callbacks."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.task_info", "model.task_info", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint.")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Name of the run directory (default: the start time).")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/mtl/score",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:02d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(MetricsReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(PredictionOverlays, "overlays")
        parser.add_lightning_class_args(GradientConflictHeatmap, "gradient_conflict")

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        self._saved_values = {
            "trainer.default_root_dir": config.trainer.default_root_dir,
            "trainer.logger": copy.deepcopy(config.trainer.logger),
            "checkpoint.dirpath": config.checkpoint.dirpath,
        }
        base = Path(config.trainer.default_root_dir or "runs")
        self.run_dir = _new_run_dir(base, config.run_name)
        config.trainer.default_root_dir = str(self.run_dir)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if hasattr(logger, "init_args"):
                logger.init_args.save_dir = str(self.run_dir)
                if logger.class_path.endswith("CSVLogger"):
                    logger.init_args.name = ""
                    logger.init_args.version = ""
        rank_zero_info(f"Run directory: {self.run_dir}")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The saved config.yaml keeps what the user wrote, so that rerunning it makes a new
        # run directory instead of writing into this one.
        config = self._subcommand_config()
        for key, value in self._saved_values.items():
            config[key] = value

    def after_fit(self) -> None:
        data = self.datamodule
        if self.config["fit"].test_after_fit and hasattr(data, "has_split") and (
            not data.has_split("test")
        ):
            rank_zero_info("test_after_fit: the data has no test split, nothing to test.")
        elif self.config["fit"].test_after_fit:
            best = self.trainer.checkpoint_callback
            ckpt = "best" if best is not None and best.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        self._print_run_dir()

    def after_validate(self) -> None:
        self._print_run_dir()

    def after_test(self) -> None:
        self._print_run_dir()

    def after_predict(self) -> None:
        self._print_run_dir()

    def _print_run_dir(self) -> None:
        rank_zero_info(f"Run directory: {self.run_dir}")


USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def run_cli(args: list[str] | None = None) -> MultiTaskCLI:
    """Run the CLI and let exceptions propagate (for tests and programmatic use)."""
    return MultiTaskCLI(
        MultiTaskModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def _one_line(error: BaseException) -> str:
    """The user-facing sentence of an error, also when a DataLoader worker raised it (PyTorch
    then re-raises it with the worker's traceback folded into the message)."""
    message = str(error.args[0]) if error.args else str(error)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[-1]
    return message


def main(args: list[str] | None = None) -> None:
    """Console entry point: errors the user can fix are printed as one line, exit code 2."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["check-data"]:
        from mtl_lightning.check_data import main as check_data

        raise SystemExit(check_data(argv[1:]))
    try:
        run_cli(None if args is None else argv)  # None: LightningCLI reads sys.argv itself
    except USER_ERRORS as error:
        print(f"mtl-lightning: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
