"""Reading and writing checkpoints safely: the CLI's Lightning ``CheckpointIO`` plugin.

Writing: Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose
temporary file lives in the system temp dir and is then *copied* across file systems, so a
full disk leaves a truncated ``best-epochNN.ckpt`` in the checkpoint folder, which a later
``--ckpt_path`` or ``test`` would pick. Here a checkpoint is written to a hidden temporary
file in its own folder, flushed to disk and renamed into place (``os.replace`` is atomic on
one file system): a checkpoint on disk is either complete or absent. On failure the partial
file is removed and :class:`CheckpointWriteError` says, in one sentence, which folder and how
much space is left; every earlier checkpoint is untouched.

Reading: a file that is not a checkpoint of this project (a foreign pickle, a malicious one,
a truncated download, another project's checkpoint) is refused with :class:`NotACheckpointError`,
one sentence naming the file, instead of an ``UnpicklingError`` traceback. Loads use
``weights_only=True`` unless the caller says otherwise, so no pickled code runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions)."""


class NotACheckpointError(ValueError):
    """A file given as a checkpoint is not one this project wrote."""


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MB free"


def read_checkpoint(path: _PATH, map_location: Any = "cpu", weights_only: bool | None = True,
                    mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict with ``state_dict`` and ``hyper_parameters``;
    :class:`NotACheckpointError` (one sentence naming the file) for anything else. ``mmap``
    maps the tensors instead of reading them (a cheap check of a large file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist or is not a file.")
    def refusal(reason: str) -> NotACheckpointError:
        return NotACheckpointError(
            f"'{path}' is not a checkpoint of mtl_lightning ({reason}); give one that a run of "
            "this project wrote (runs/<run>/checkpoints/*.ckpt).")

    try:
        checkpoint = torch.load(path, map_location=map_location, mmap=mmap,
                                weights_only=True if weights_only is None else weights_only)
    except Exception as error:  # unpickling fails in many ways on a file that is no checkpoint
        raise refusal(f"it cannot be read as one: {type(error).__name__}") from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
            and isinstance(checkpoint.get("hyper_parameters"), dict)
            and "tasks" in checkpoint["hyper_parameters"]):
        raise refusal("it holds no model state and task settings")
    return checkpoint


def write_checkpoint(checkpoint: dict[str, Any], path: _PATH) -> None:
    """Write ``checkpoint`` to ``path`` all or nothing (temporary file, fsync, rename)."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    except (OSError, RuntimeError) as raised:
        # torch.save's zip writer can turn a failed write (disk full, file too large) into a
        # RuntimeError raised while closing the archive, with the OSError as its context.
        error = _os_error_in(raised)
        if error is None:
            raise
        partial.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"Could not write checkpoint '{target.name}' in '{target.parent}' "
            f"({_free_space(target.parent)}): {error.strerror or error}; the checkpoints "
            "already there are intact (free space or set --checkpoint.dirpath, then resume "
            "with --ckpt_path last)."
        ) from None


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The first ``OSError`` in ``error``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with all-or-nothing local writes and one-sentence refusals of
    files that are not checkpoints of this project. Remote paths (``s3://``...) are left to
    Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Callable | Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location, weights_only)
