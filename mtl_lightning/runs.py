"""Run directories: where one run of the CLI writes everything it makes.

Every run gets its own folder ``<trainer.default_root_dir>/<run_name or start time>``:

- a new folder is created *exclusively* (``mkdir`` without ``exist_ok``): two processes that
  start at the same second cannot both take one name; the loser retries with ``-2``, ``-3``...;
- ``--run_name`` is a plain folder name: ``..``, ``/`` and absolute paths are refused, so a
  run never writes outside ``default_root_dir``;
- ``fit --ckpt_path last`` continues the named run, or the one whose ``last.ckpt`` is newest;
- Lightning's DDP children inherit their parent's folder through :data:`RUN_DIR_ENV`;
  processes started together by torchrun or srun share ``<run_name>`` (default: the SLURM job
  id or torchrun's rendezvous id), so a requeued SLURM job finds its folder again;
- a folder this process created and that holds nothing when the command fails (a config
  error raised after parsing) is removed again: :func:`remove_unused_run_dirs`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

RUN_DIR_ENV = "MTL_LIGHTNING_RUN_DIR"
LAST_CHECKPOINT = Path("checkpoints", "last.ckpt")
#: Files a run writes before it has done anything worth keeping.
_NOT_WORTH_KEEPING = {"config.yaml"}

_created_here: list[Path] = []


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name, else a ValueError that says what to give."""
    separators = {os.sep, os.altsep} - {None}
    if name in ("", ".", "..") or any(s in name for s in separators):
        raise ValueError(f"--run_name '{name}' must be a plain folder name (no '/', no '..'): "
                         "the run is written to <trainer.default_root_dir>/<run_name>.")
    return name


def make_base(base: Path) -> None:
    """Create ``trainer.default_root_dir``; one sentence when a file stands in the way."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [base, *base.parents] if p.exists() and not p.is_dir()), base)
        raise ValueError(f"trainer.default_root_dir '{base}' cannot be a folder: '{blocker}' is "
                         "a file; give another --trainer.default_root_dir.") from None
    except PermissionError:
        raise ValueError(f"trainer.default_root_dir '{base}' cannot be created: permission "
                         "denied; give a folder you can write to.") from None


def run_to_resume(base: Path, name: str | None) -> Path | None:
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


def launched_together() -> bool:
    """Whether this process is one of several that an outside launcher (torchrun, SLURM's
    srun) started, each running this command: they must agree on one run directory."""
    env = os.environ
    torchrun = "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1
    return torchrun or ("SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1)


def launcher_run_name() -> str | None:
    """A run name all processes of one launch share: the SLURM job id, or torchrun's
    ``--rdzv_id``."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return None if run_id == "none" else f"torchrun-{run_id}"


def _create_exclusively(base: Path, stem: str) -> Path:
    """``base/stem``, or ``base/stem-2``, ``-3``... : the first name nobody else created."""
    counter = 1
    while True:
        run_dir = base / (stem if counter == 1 else f"{stem}-{counter}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            counter += 1
            continue
        _created_here.append(run_dir)
        return run_dir


def new_run_dir(base: Path, name: str | None, resume: bool = False) -> Path:
    """A fresh run directory, or with ``resume`` the one to continue (:func:`run_to_resume`);
    shared with DDP child processes through the environment. Processes started together by
    torchrun or srun all use ``<base>/<run_name>`` (default: the job or rendezvous id)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and "LOCAL_RANK" in os.environ:  # a DDP child started by Lightning
        return Path(inherited)
    if name is not None:
        check_run_name(name)
    make_base(base)
    together = launched_together()
    name = name or (launcher_run_name() if together else None)
    if together and name is None:
        raise ValueError("This is one of several processes started by torchrun: give "
                         "--run_name NAME (or torchrun --rdzv_id) so they share a run directory.")
    resumed = run_to_resume(base, name) if resume else None
    if resumed is None and together:
        resumed = base / name
    if resumed is not None:
        resumed.mkdir(parents=True, exist_ok=True)
        run_dir = resumed
    else:
        run_dir = _create_exclusively(base, name or time.strftime("%Y%m%d-%H%M%S"))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def keep_run_dirs() -> None:
    """The command succeeded: the run directories it created stay, whatever they hold."""
    _created_here.clear()


def _holds_results(run_dir: Path) -> bool:
    return any(path.is_file() and path.name not in _NOT_WORTH_KEEPING
               for path in run_dir.rglob("*"))


def remove_unused_run_dirs() -> list[Path]:
    """Remove the run directories this process created that hold no result (nothing but
    empty folders and ``config.yaml``): what a command that failed early leaves. Returns the
    removed folders."""
    removed = []
    while _created_here:
        run_dir = _created_here.pop()
        if run_dir.is_dir() and not _holds_results(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


def checkpoint_run_dir(ckpt_path: str | Path | None) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/x.ckpt`` or
    ``<run>/x.ckpt``, recognised by the run's ``config.yaml``); ``None`` if it has none."""
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc") or "://" in str(ckpt_path):
        return None
    path = Path(ckpt_path)
    return next((folder for folder in (path.parent, path.parent.parent)
                 if (folder / "config.yaml").is_file()), None)
