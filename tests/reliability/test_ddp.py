"""DDP with 2 CPU processes through the CLI (``configs/trainer/ddp_cpu.yaml``): fit and
validate complete with partial labels, write one run directory, and validate like one process.

The CLI runs in a child process, as a user runs it: Lightning's DDP launcher starts the second
process by re-running the same command line with ``LOCAL_RANK`` set, and that process must
join the first one's run directory (``MTL_LIGHTNING_RUN_DIR``) instead of making its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mtl_lightning.cli import run_cli
from mtl_lightning.data import ScenesDataModule

from .helpers import (
    RecordLabelledTasks,
    callback_arg,
    cli_args,
    cli_command,
    cli_subprocess_env,
    run_dirs,
)

DDP_CPU = Path(__file__).resolve().parents[2] / "configs" / "trainer" / "ddp_cpu.yaml"
# Half of the training images lack detection labels and half lack segmentation labels
# (train split only); batches of 2 images per process then often lack a task on one process.
PARTIAL = {"--data.init_args.label_fraction": '{"detection": 0.5, "segmentation": 0.5}',
           "--data.init_args.batch_size": "2", "--data.init_args.eval_batch_size": "4"}
# The validation set has an even size: DistributedSampler pads a split to a multiple of the
# number of processes by repeating samples, and a repeated sample would count twice in the
# DDP metrics (8 images: 4 per process, no padding, each image seen exactly once).
NUM_VAL = 8
METRICS = ("classification/accuracy", "classification/macro_accuracy", "segmentation/miou",
           "segmentation/pixel_accuracy", "detection/map_50", "detection/map", "mtl/score")


def _run(args: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(cli_command(*args), env=cli_subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_fit_and_validate_match_one_process(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    common = {**PARTIAL, "--data.init_args.num_val": str(NUM_VAL)}
    ScenesDataModule(
        root=str(scenes), image_size=32, num_train=16, num_val=NUM_VAL, num_test=8,
        num_classes=4, label_fraction={"detection": 0.5, "segmentation": 0.5},
        generator_workers=0,
    ).prepare_data()  # once, here: the two processes then only read it
    records = tmp_path / "records"
    records.mkdir()
    runs = tmp_path / "runs"
    fit = _run(["fit", *cli_args(runs, scenes, "--trainer", str(DDP_CPU),
                                 *callback_arg(RecordLabelledTasks, folder=str(records)),
                                 **common)])

    # One run directory (the child process joined the parent's), written once.
    (run_dir,) = run_dirs(runs)
    assert fit.stderr.count("Initializing distributed: GLOBAL_RANK") == 2
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch") and names[1] == "last.ckpt"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file()

    # Partial labels: at some step one process's batch lacked a task that its peer had.
    logs = [dict(line.split(" ") if " " in line.strip() else (line.strip(), "")
                 for line in (records / f"rank{r}.txt").read_text().splitlines())
            for r in (0, 1)]
    assert logs[0].keys() == logs[1].keys() and len(logs[0]) == 2 * 16 // (2 * 2)
    assert any(set(logs[0][s].split(",")) != set(logs[1][s].split(",")) for s in logs[0])

    # Validation of the last checkpoint: under DDP (fit's last epoch, and `validate`) and in
    # one process, the same numbers (metrics are synced, each image counted once). The
    # ``{stage}/{task}/loss`` keys are left out: the module logs them without ``sync_dist``,
    # so under DDP they are rank 0's half of the set.
    last = str(run_dir / "checkpoints" / "last.ckpt")
    _run(["validate", *cli_args(runs, scenes, "--trainer", str(DDP_CPU), **common),
          "--ckpt_path", last])
    single = run_cli(["validate", *cli_args(runs, scenes, **common), "--ckpt_path", last])
    ddp_validate = next(d for d in run_dirs(runs) if d not in (run_dir, Path(single.run_dir)))
    fitted = json.loads((run_dir / "metrics.json").read_text())
    validated = json.loads((ddp_validate / "metrics.json").read_text())
    alone = json.loads((Path(single.run_dir) / "metrics.json").read_text())
    for key in METRICS:
        assert validated[f"val/{key}"] == pytest.approx(alone[f"val/{key}"], abs=1e-6), key
        # fit's val/... is the kept (best) epoch; the last epoch's values are last/val/...
        assert fitted[f"last/val/{key}"] == pytest.approx(alone[f"val/{key}"], abs=1e-6), key
    assert len(run_dirs(runs)) == 3  # fit, DDP validate, single validate: one folder each
