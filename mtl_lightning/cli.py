"""The command line: ``mtl-lightning fit|validate|test|predict --config configs/default.yaml``,
and the tools ``mtl-lightning check-data|compare|export`` (see ``commands.py``).

A LightningCLI whose data module is chosen by class path and whose model is the
MultiTaskModule. On top of Lightning's CLI it:

- links ``data.task_info`` into ``model.task_info`` (class counts come from the data);
- gives every run its own directory ``<trainer.default_root_dir>/<run_name or time>``
  holding ``config.yaml``, ``metrics.json``, checkpoints, logs and predictions, and prints it
  (``runs.py``);
- always adds a ``checkpoint`` (best by ``val/mtl/score`` and ``last``), a ``report`` (console
  table + metrics.json), ``overlays`` (validation images drawn as PNG and W&B images), a
  ``gradient_conflict`` heatmap (PNG + W&B), a ``confusion_matrix`` (PNG + W&B),
  ``wandb_summaries`` (best-value summaries, config and parameter counts in the W&B run, its
  id in ``wandb_id.txt``) and a ``prediction_writer``, each configurable under its own key;
- ``fit --ckpt_path`` of a checkpoint whose run directory has ``wandb_id.txt`` continues
  that W&B run;
- saves the random generators' states in checkpoints (``random_state``) and checkpoints at
  the end of the training epoch, so a run resumed at an epoch boundary matches the
  uninterrupted one;
- ``fit --ckpt_path last`` continues the latest run under ``trainer.default_root_dir`` (or
  the run named by ``--run_name``) in its own directory, from its ``checkpoints/last.ckpt``;
- ``mtl-lightning check-data``, ``compare`` and ``export`` are the tool sub-commands of
  ``commands.py`` (jsonargparse sub-commands of one parser): ``compare`` puts runs side by
  side with delta_m (``compare.py``) from ``metrics.json`` and the ``run.json`` that the
  ``run_statistics`` callback writes; ``export`` writes a checkpoint's model to ONNX /
  TorchScript (``export.py``);
- with ``test_after_fit: true``, tests the best checkpoint when ``fit`` ends;
- after ``validate`` and ``test`` prints one table, the report's per-task one, instead of
  Lightning's table of the same numbers as raw floats (``--report.print_table false``
  brings Lightning's back);
- writes checkpoints all or nothing and refuses files that are not checkpoints of this
  project in one sentence (``checkpoint_io.py``);
- on SIGTERM / SIGINT during ``fit`` saves ``last.ckpt``, prints the resume command and exits
  with 143 / 130 (``callbacks/interruption.py``); warns when ``max_time`` will cut the
  learning-rate schedule short (``callbacks/schedule_check.py``);
- ``predict --ckpt_path CKPT`` without ``--config`` uses the settings of the run that wrote
  the checkpoint (its ``config.yaml``) and writes into ``<that run>/predictions/<time>/``;
  predict never prepares or sets up the training data;
- refuses abbreviated options (``--trainer.max_epoch``) and turns the errors a user can fix
  (unknown backbone or task, bad option, a nested class_path error) into one line instead of
  a traceback or a usage dump; run-directory rules are in ``runs.py``.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from mtl_lightning.callbacks import (
    ConfusionMatrix,
    FrozenGarbageCollector,
    GradientConflictHeatmap,
    MetricsReport,
    PredictionOverlays,
    PredictionWriter,
    RunStatistics,
    WandbSummaries,
    interruption,
)
from mtl_lightning.callbacks.checkpoint import Checkpoint
from mtl_lightning.callbacks.interruption import InterruptionCheckpoint
from mtl_lightning.callbacks.prediction_writer import skipped_images_error
from mtl_lightning.callbacks.random_state import RandomState
from mtl_lightning.callbacks.schedule_check import ScheduleCheck
from mtl_lightning.checkpoint_io import CheckpointWriteError, SafeCheckpointIO, read_checkpoint
from mtl_lightning.cli_errors import USER_ERRORS, inner_sentence, one_line
from mtl_lightning.commands import TOOLS, run_tool
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.loggers import resume_wandb_run
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.runs import (
    LAST_CHECKPOINT,
    RUN_DIR_ENV,  # noqa: F401 (re-exported: tests and scripts import it from here)
    checkpoint_run_dir,
    keep_run_dirs,
    new_run_dir,
    remove_unused_run_dirs,
)

OUT_OF_MEMORY = (
    "out of accelerator memory during a step. Lower --data.init_args.batch_size (and keep the "
    "effective batch with --trainer.accumulate_grad_batches N), train in --trainer.precision "
    "bf16-mixed, lower --data.init_args.image_size, or use a smaller --model.backbone; the "
    "checkpoints already written are intact (resume with --ckpt_path last)."
)


class MultiTaskCLI(LightningCLI):
    """LightningCLI with run directories, linked class information and fixed callbacks."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.task_info", "model.task_info", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint.")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Name of the run directory (default: the start time).")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/mtl/score",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:02d}",
            "checkpoint.auto_insert_metric_name": False,
            # After LightningModule.on_train_epoch_end (epoch-based balancer state such as
            # DWA's history is then up to date), not at validation end: exact resume.
            "checkpoint.save_on_train_epoch_end": True,
        })
        parser.add_lightning_class_args(MetricsReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(PredictionOverlays, "overlays")
        parser.add_lightning_class_args(GradientConflictHeatmap, "gradient_conflict")
        parser.add_lightning_class_args(RandomState, "random_state")
        parser.add_lightning_class_args(ConfusionMatrix, "confusion_matrix")
        parser.add_lightning_class_args(WandbSummaries, "wandb_summaries")
        parser.add_lightning_class_args(RunStatistics, "run_statistics")
        parser.add_lightning_class_args(FrozenGarbageCollector, "garbage_collection")
        parser.add_lightning_class_args(InterruptionCheckpoint, "interruption")
        parser.add_lightning_class_args(ScheduleCheck, "schedule_check")

    def _parse_ckpt_path(self) -> None:
        """Lightning (2.6, private hook) reads the model's hyper-parameters from ``--ckpt_path``
        here, first of all: a file that is not a checkpoint of this project is refused with one
        sentence before it (``NotACheckpointError``), not with an ``UnpicklingError``."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path, mmap=True)
        super()._parse_ckpt_path()

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
        resume = self.subcommand == "fit" and config.ckpt_path == "last"
        predicted_run = (checkpoint_run_dir(config.ckpt_path)
                         if self.subcommand == "predict" and config.ckpt_path else None)
        if predicted_run is not None:
            # Predictions of a run's checkpoint go into that run: <run>/predictions/<time>/.
            self.run_dir = new_run_dir(predicted_run / "predictions", None)
            if config.prediction_writer.output_dir is None:
                self._saved_values["prediction_writer.output_dir"] = None
                config.prediction_writer.output_dir = str(self.run_dir)
        else:
            self.run_dir = new_run_dir(base, config.run_name, resume=resume)
        config.trainer.default_root_dir = str(self.run_dir)
        if predicted_run is not None and config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(predicted_run / "checkpoints")  # nothing is saved
        elif config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
            if resume and (self.run_dir / LAST_CHECKPOINT).is_file():
                # What Lightning's "last" finds there, named, so the W&B run is found too.
                self._saved_values["ckpt_path"] = config.ckpt_path
                config.ckpt_path = str(self.run_dir / LAST_CHECKPOINT)
                rank_zero_info(f"Resuming from {config.ckpt_path}")
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if hasattr(logger, "init_args"):
                logger.init_args.save_dir = str(self.run_dir)
                if logger.class_path.endswith("CSVLogger"):
                    logger.init_args.name = ""
                    logger.init_args.version = ""
                if logger.class_path.endswith("WandbLogger") and self.subcommand == "fit":
                    resume_wandb_run(logger.init_args, config.ckpt_path)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The saved config.yaml keeps what the user wrote, so that rerunning it makes a new
        # run directory instead of writing into this one.
        config = self._subcommand_config()
        for key, value in self._saved_values.items():
            config[key] = value
        rank_zero_info(f"Run directory: {self.run_dir}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with :class:`SafeCheckpointIO` unless the config names a CheckpointIO."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        plugins = kwargs.pop("plugins", trainer_config.get("plugins"))
        plugins = list(plugins) if isinstance(plugins, list) else [] if plugins is None else [
            plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(SafeCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def before_predict(self) -> None:
        """Predicting needs no training data: the data module is not prepared or set up (no
        Scenes generation, no annotation validation); its predict loader reads the folder."""
        def nothing(*args: Any, **kwargs: Any) -> None:
            return None

        self.datamodule.prepare_data = nothing
        self.datamodule.setup = nothing

    def before_validate(self) -> None:
        self._one_table("validate")

    def before_test(self) -> None:
        self._one_table("test")

    def _lightning_table(self, subcommand: str) -> bool:
        """Whether Lightning prints its own table of raw floats after an evaluation: only
        when the report's per-task table is off (``--report.print_table false``); one table
        of the same numbers is enough."""
        return not self.config[subcommand].report.print_table

    def _one_table(self, subcommand: str) -> None:
        """``trainer.validate/test(verbose=...)`` (LightningCLI's ``--verbose``) follows
        :meth:`_lightning_table`."""
        if not self._lightning_table(subcommand):
            self.config_init[subcommand].verbose = False

    def after_fit(self) -> None:
        data: MultiTaskDataModule = self.datamodule
        if self.config["fit"].test_after_fit and not data.has_split("test"):
            rank_zero_info("test_after_fit: the data has no test split, nothing to test.")
        elif self.config["fit"].test_after_fit:
            best = self.trainer.checkpoint_callback
            ckpt = "best" if best is not None and best.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt,
                              verbose=self._lightning_table("fit"))
        self._print_run_dir()

    def after_validate(self) -> None:
        self._print_run_dir()

    def after_test(self) -> None:
        self._print_run_dir()

    def after_predict(self) -> None:
        self._print_run_dir()
        writers = [c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)]
        error = skipped_images_error(writers)
        if error is not None:  # the others are written; the exit code must still say so
            raise error

    def _print_run_dir(self) -> None:
        rank_zero_info(f"Run directory: {self.run_dir}")


#: Every sub-command parser refuses abbreviated options (``--trainer.max_epoch 1`` would
#: otherwise be taken as ``--trainer.max_epochs 1``).
SUBCOMMANDS = ("fit", "validate", "test", "predict")
PARSER_KWARGS: dict[str, Any] = {
    "prog": "mtl-lightning",
    "allow_abbrev": False,
    "description": "Multi-task computer vision with PyTorch Lightning. Besides Lightning's "
                   f"sub-commands below, the tools {', '.join(TOOLS)} (mtl-lightning COMMAND "
                   "--help).",
    **{name: {"allow_abbrev": False} for name in SUBCOMMANDS},
}


def run_cli(args: list[str] | None = None, exit_on_error: bool = True) -> MultiTaskCLI:
    """Run the CLI and let exceptions propagate (for tests and programmatic use). A run
    directory this call created and left without results is removed when it fails. With
    ``exit_on_error=False`` a parsing error is raised (``argparse.ArgumentError``) instead of
    printed with the usage."""
    interruption.last_interruption = None
    parser_kwargs = {key: {**value, "exit_on_error": exit_on_error} if isinstance(value, dict)
                     else value for key, value in PARSER_KWARGS.items()}
    parser_kwargs["exit_on_error"] = exit_on_error
    try:
        with warnings.catch_warnings():  # main() passes sys.argv on, possibly completed
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            cli = MultiTaskCLI(
                MultiTaskModule,
                MultiTaskDataModule,  # every data.class_path is one (task_info, has_split)
                subclass_mode_data=True,
                args=args,
                save_config_kwargs={"overwrite": True},
                parser_kwargs=parser_kwargs,
            )
    except BaseException:
        remove_unused_run_dirs()
        raise
    keep_run_dirs()
    return cli


def _with_run_config(argv: list[str]) -> list[str]:
    """``predict --ckpt_path CKPT`` without ``--config``: the settings of the run that wrote
    the checkpoint (its ``config.yaml``) come first, the user's options after them."""
    if argv[:1] != ["predict"] or any(a in ("--config", "-c") or a.startswith("--config=")
                                      for a in argv):
        return argv
    ckpt = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"),
                next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None))
    if ckpt is None or not Path(ckpt).is_file():
        return argv
    run_dir = checkpoint_run_dir(ckpt)
    if run_dir is None:
        raise ValueError(f"predict without --config reads the settings of the run that wrote "
                         f"'{ckpt}' from its config.yaml, and there is none next to it "
                         "(<run>/checkpoints/*.ckpt, <run>/config.yaml); give --config.")
    return ["predict", "--config", str(run_dir / "config.yaml"), *argv[1:]]


def _resume_command(argv: list[str], run_dir: Path) -> str:
    """The command that continues an interrupted ``fit``: the same one with ``--ckpt_path
    last --run_name <its folder>``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--ckpt_path", "--run_name"):
            skip = True
            continue
        if not arg.startswith(("--ckpt_path=", "--run_name=")):
            kept.append(arg)
    return shlex.join(["mtl-lightning", *kept, "--ckpt_path", "last",
                       "--run_name", run_dir.name])


def _report_interruption(argv: list[str]) -> None:
    """After SIGTERM or SIGINT: where the state is, how to resume; exit 128 + signal."""
    stop = interruption.last_interruption
    if stop is None:
        return
    name = stop.signal.name
    if stop.checkpoint is not None:
        print(f"mtl-lightning: {name} received at epoch {stop.epoch}, step {stop.step}: the "
              f"state is saved in {stop.checkpoint}; resume with: "
              f"{_resume_command(argv, stop.checkpoint.parents[1])}", file=sys.stderr)
    else:
        print(f"mtl-lightning: stopped by {name}.", file=sys.stderr)
    raise SystemExit(stop.exit_code)


def main(args: list[str] | None = None) -> None:
    """Console entry point: errors the user can fix are printed as one line, exit code 2;
    a run stopped by SIGTERM / SIGINT exits with 143 / 130."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] and argv[0] in TOOLS:  # check-data, compare, export (commands.py)
        raise SystemExit(run_tool(argv))
    try:
        argv = _with_run_config(argv)
        run_cli(argv, exit_on_error=False)
    except argparse.ArgumentError as error:
        message = inner_sentence(str(error))
        if message.startswith("unrecognized arguments"):
            subcommand = argv[0] if argv and argv[0] in SUBCOMMANDS else None
            command = " ".join(filter(None, ["mtl-lightning", subcommand, "--help"]))
            message += f" (options are never abbreviated; see {command})"
        print(f"mtl-lightning: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        interruption.last_interruption = interruption.last_interruption or (
            interruption.Interruption(signal.SIGINT, None, 0, 0))
        _report_interruption(argv)
    except SystemExit:
        _report_interruption(argv)
        raise
    except USER_ERRORS as error:
        print(f"mtl-lightning: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointWriteError as error:
        print(f"mtl-lightning: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except torch.OutOfMemoryError:
        print(f"mtl-lightning: error: {OUT_OF_MEMORY}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
