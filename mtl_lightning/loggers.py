"""W&B logging that works without an account: offline unless credentials exist.

``AutoWandbLogger(mode="auto")`` goes online when the user has logged in (``wandb login``
writes ``~/.netrc``) or set ``WANDB_API_KEY``, and offline otherwise; at the end of the run it
prints the ``wandb sync`` command that uploads an offline run later.

Checkpoints as W&B artifacts: ``log_model: true`` uploads the best and last checkpoints when
training ends, ``log_model: all`` every checkpoint as it is saved (Lightning's WandbLogger
does the upload). It is off by default, and ignored with a warning when the run is offline
(nothing could be uploaded).

Resuming: the ``wandb_summaries`` callback writes the run's id to ``<run dir>/wandb_id.txt``;
``mtl-lightning fit --ckpt_path <run dir>/checkpoints/last.ckpt`` finds it
(:func:`resume_wandb_run`) and continues the same W&B run instead of starting a new one.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from mtl_lightning.wandb_singletons import publish_singletons_once

#: File in a run directory holding the id of the W&B run that logged it.
WANDB_ID_FILE = "wandb_id.txt"


def wandb_credentials_available() -> bool:
    """True when W&B can authenticate: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_run_id_near(ckpt_path: str | Path | None) -> str | None:
    """The W&B run id stored in the run directory of a checkpoint file, if any.

    Looks in the checkpoint's folder and the two above it (``<run dir>/checkpoints/x.ckpt``
    is the usual layout); Lightning's special values (``last``, ``best``) give ``None``.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    for folder in list(Path(ckpt_path).resolve().parents)[:3]:
        stored = folder / WANDB_ID_FILE
        if stored.is_file():
            return stored.read_text().strip() or None
    return None


def resume_wandb_run(init_args: Any, ckpt_path: str | Path | None) -> str | None:
    """Make a W&B logger's ``init_args`` continue the run that wrote ``ckpt_path``.

    Sets ``init_args.id`` (Lightning's WandbLogger already passes ``resume="allow"``) unless
    the user chose an id; returns the id used, or ``None`` when there is nothing to resume.
    """
    if getattr(init_args, "id", None) or getattr(init_args, "version", None):
        return None
    run_id = wandb_run_id_near(ckpt_path)
    if run_id is not None:
        init_args.id = run_id
        rank_zero_info(f"Resuming W&B run {run_id} (from {WANDB_ID_FILE} next to {ckpt_path}).")
    return run_id


class AutoWandbLogger(WandbLogger):
    """Lightning's WandbLogger with ``mode`` auto/online/offline.

    Args:
        mode: ``auto`` (online only with credentials), ``online`` or ``offline``.
        **kwargs: everything ``lightning.pytorch.loggers.WandbLogger`` takes (project, name,
            save_dir, id, tags, ...). ``log_model`` (``false``, ``true`` or ``all``) uploads
            checkpoints as W&B artifacts when online; offline it is switched off with a
            warning instead of failing as the plain WandbLogger does.
    """

    def __init__(self, mode: Literal["auto", "online", "offline"] = "auto", **kwargs: Any):
        env_mode = os.environ.get("WANDB_MODE")
        if mode == "auto":
            offline = env_mode in ("offline", "dryrun") or not wandb_credentials_available()
        else:
            offline = mode == "offline"
        kwargs.pop("offline", None)
        if offline and kwargs.get("log_model"):
            rank_zero_warn("W&B runs offline: log_model is ignored (checkpoints stay in the run "
                           "directory; 'wandb sync' does not upload them).")
            kwargs["log_model"] = False
        super().__init__(offline=offline, **kwargs)
        self.mode = "offline" if offline else "online"
        self._sync_hinted = False

    @property
    def experiment(self) -> Any:
        """The W&B run; image masks and boxes publish their class labels into its config
        once instead of once per image (:mod:`mtl_lightning.wandb_singletons`)."""
        run = super().experiment
        publish_singletons_once(run)
        return run

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self.mode == "offline" and self._experiment is not None and not self._sync_hinted:
            self._sync_hinted = True  # finalize runs after fit and again after test
            run_folder = Path(self._experiment.dir).parent
            print(f"W&B ran offline. Upload this run with: wandb sync {run_folder}")
