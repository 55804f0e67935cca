"""Every real-data test runs from the repository root (as the README's commands are typed)
with W&B offline and no credentials, and closes the W&B run it opened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb

from tests.conftest import REPO


@contextlib.contextmanager
def as_a_user(home: Path, cwd: Path = REPO) -> Iterator[None]:
    """Commands run in ``cwd`` with W&B offline (no credentials) writing under ``home``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("WANDB_API_KEY", raising=False)
        patch.setenv("HOME", str(home))  # no ~/.netrc: offline
        patch.setenv("WANDB_DIR", str(home))
        patch.setenv("WANDB_SILENT", "true")
        wandb.finish()
        try:
            yield
        finally:
            wandb.finish()


@pytest.fixture(autouse=True)
def _as_a_user(tmp_path: Path) -> Iterator[None]:
    with as_a_user(tmp_path):
        yield
