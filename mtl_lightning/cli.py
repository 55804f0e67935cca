"""The command line: ``mtl-lightning fit|validate|test|predict --config configs/default.yaml``,
and ``mtl-lightning check-data`` (see ``check_data.py``).

A LightningCLI whose data module is chosen by class path and whose model is the
MultiTaskModule. On top of Lightning's CLI it:

- links ``data.task_info`` into ``model.task_info`` (class counts come from the data);
- gives every run its own directory ``<trainer.default_root_dir>/<run_name or time>``
  holding ``config.yaml``, ``metrics.json``, checkpoints, logs and predictions, and prints it;
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
- ``mtl-lightning compare`` puts runs side by side with delta_m (``compare.py``), from
  ``metrics.json`` and the ``run.json`` that the ``run_statistics`` callback writes;
- ``mtl-lightning export`` writes a checkpoint's model to ONNX / TorchScript (``export.py``);
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

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
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
)
from mtl_lightning.callbacks.checkpoint import Checkpoint
from mtl_lightning.callbacks.prediction_writer import skipped_images_error
from mtl_lightning.callbacks.random_state import RandomState
from mtl_lightning.loggers import resume_wandb_run
from mtl_lightning.module import MultiTaskModule

OUT_OF_MEMORY = (
    "out of accelerator memory during a step. Lower --data.init_args.batch_size (and keep the "
    "effective batch with --trainer.accumulate_grad_batches N), train in --trainer.precision "
    "bf16-mixed, lower --data.init_args.image_size, or use a smaller --model.backbone; the "
    "checkpoints already written are intact (resume with --ckpt_path last)."
)
RUN_DIR_ENV = "MTL_LIGHTNING_RUN_DIR"
LAST_CHECKPOINT = Path("checkpoints", "last.ckpt")


def _run_to_resume(base: Path, name: str | None) -> Path | None:
    """The run directory that ``fit --ckpt_path last`` continues: ``<base>/<run_name>`` when a
    run name is given (made if missing, so a requeued job keeps one folder), else the run under
    ``base`` whose ``checkpoints/last.ckpt`` was written most recently; ``None`` if there is
    none (the run then starts afresh in a new folder, as Lightning does)."""
    if name is not None:
        return base / name
    candidates = list(base.glob(f"*/{LAST_CHECKPOINT}"))
    if not candidates:
        return None
    return max(candidates, key=lambda path: path.stat().st_mtime).parents[1]


def _launched_together() -> bool:
    """Whether this process is one of several that an outside launcher (torchrun, SLURM's
    srun) started, each running this command: they must agree on one run directory."""
    env = os.environ
    torchrun = "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1
    return torchrun or ("SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1)


def _launcher_run_name() -> str | None:
    """A run name all processes of one launch share: the SLURM job id, or torchrun's
    ``--rdzv_id``."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return None if run_id == "none" else f"torchrun-{run_id}"


def _new_run_dir(base: Path, name: str | None, resume: bool = False) -> Path:
    """A fresh run directory, or with ``resume`` the one to continue (:func:`_run_to_resume`);
    shared with DDP child processes through the environment. Processes started together by
    torchrun or srun all use ``<base>/<run_name>`` (default: the job or rendezvous id)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and "LOCAL_RANK" in os.environ:  # a DDP child started by Lightning
        return Path(inherited)
    together = _launched_together()
    name = name or (_launcher_run_name() if together else None)
    if together and name is None:
        raise ValueError("This is one of several processes started by torchrun: give "
                         "--run_name NAME (or torchrun --rdzv_id) so they share a run directory.")
    resumed = _run_to_resume(base, name) if resume else None
    if resumed is None and together:
        resumed = base / name
    if resumed is not None:
        resumed.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_DIR_ENV] = str(resumed)
        return resumed
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
        self.run_dir = _new_run_dir(base, config.run_name, resume=resume)
        config.trainer.default_root_dir = str(self.run_dir)
        if config.checkpoint.dirpath is None:
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
        writers = [c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)]
        error = skipped_images_error(writers)
        if error is not None:  # the others are written; the exit code must still say so
            raise error

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
    if "Union subtypes" in message and "\n  - " in message:
        # A data module's own sentence, inside jsonargparse's report of each Union member.
        message = message.split("\n  - ", 1)[1].split("\n", 1)[0]
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
    if argv[:1] == ["compare"]:
        from mtl_lightning.compare import main as compare

        try:
            raise SystemExit(compare(argv[1:]))
        except USER_ERRORS as error:
            print(f"mtl-lightning compare: error: {_one_line(error)}", file=sys.stderr)
            raise SystemExit(2) from None
    if argv[:1] == ["export"]:
        from mtl_lightning.export import main as export

        raise SystemExit(export(argv[1:]))
    try:
        run_cli(None if args is None else argv)  # None: LightningCLI reads sys.argv itself
    except USER_ERRORS as error:
        print(f"mtl-lightning: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except torch.OutOfMemoryError:
        print(f"mtl-lightning: error: {OUT_OF_MEMORY}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
