"""W&B logging that works without an account: offline unless credentials exist.

``AutoWandbLogger(mode="auto")`` goes online when the user has logged in (``wandb login``
writes ``~/.netrc``) or set ``WANDB_API_KEY``, and offline otherwise; at the end of the run it
prints the ``wandb sync`` command that uploads an offline run later.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def wandb_credentials_available() -> bool:
    """True when W&B can authenticate: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """Lightning's WandbLogger with ``mode`` auto/online/offline.

    Args:
        mode: ``auto`` (online only with credentials), ``online`` or ``offline``.
        **kwargs: everything ``lightning.pytorch.loggers.WandbLogger`` takes (project, name,
            save_dir, log_model, tags, ...).
    """

    def __init__(self, mode: Literal["auto", "online", "offline"] = "auto", **kwargs: Any):
        env_mode = os.environ.get("WANDB_MODE")
        if mode == "auto":
            offline = env_mode in ("offline", "dryrun") or not wandb_credentials_available()
        else:
            offline = mode == "offline"
        kwargs.pop("offline", None)
        super().__init__(offline=offline, **kwargs)
        self.mode = "offline" if offline else "online"
        self._sync_hinted = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self.mode == "offline" and self._experiment is not None and not self._sync_hinted:
            self._sync_hinted = True  # finalize runs after fit and again after test
            run_folder = Path(self._experiment.dir).parent
            print(f"W&B ran offline. Upload this run with: wandb sync {run_folder}")
