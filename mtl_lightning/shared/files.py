"""Writing a small text file so that a reader never sees half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place.

    ``os.replace`` is atomic on one file system, so a concurrent reader (another shard of
    a study, a dashboard) sees the old file or the new one, and a full disk leaves the
    previous file intact and no partial file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
