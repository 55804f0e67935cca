"""``peak_rss_mb``: the peak resident memory of the default run.

The default job (``mtl-lightning fit --config configs/default.yaml``) runs in a child
process, shortened to one epoch of ``rss_train_batches`` training batches followed by the
full validation and the test of the best checkpoint, with the CSV logger. Memory does not
grow with the number of steps, so every phase of the real run is covered. A small wrapper
process starts the run and reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak RSS
of the run's main process over its whole life (the largest of its process tree, loader
workers included). ``fit_mb`` is the main process's peak up to the end of fit (its
``run.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import GPU_TRAINER, REPO
from .settings import Settings

#: runs the command given as arguments, then prints its peak RSS in KiB
WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def peak_rss(settings: Settings, device: str, config: Path,
             args: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mtl-bench-rss-") as scratch:
        command = [sys.executable, "-c", WRAPPER,
                   sys.executable, "-m", "mtl_lightning.cli", "fit", "--config", str(config),
                   *args, "--trainer.logger", str(REPO / "configs" / "logger" / "csv.yaml"),
                   "--trainer.max_epochs=1",
                   f"--trainer.limit_train_batches={settings.rss_train_batches}",
                   "--trainer.default_root_dir", scratch, "--run_name", "rss",
                   "--overlays.num_images=0"]
        if device == "cuda":
            command += ["--trainer", str(GPU_TRAINER)]
        process = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if process.returncode != 0:
            raise RuntimeError(f"the default run failed: {process.stderr[-2000:]}")
        run = json.loads((Path(scratch) / "rss" / "run.json").read_text())
    peak_kb = int(process.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": peak_kb / 1024, "fit_mb": run["fit/peak_rss_mb"],
            "train_batches": settings.rss_train_batches}
