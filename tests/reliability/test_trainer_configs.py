"""The trainer configs parse through the CLI and merge into a run config as documented:
``--trainer configs/trainer/X.yaml`` changes only the keys the file names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtl_lightning.cli import main
from tests.conftest import SMOKE_CONFIG

TRAINER_CONFIGS = SMOKE_CONFIG.parent / "trainer"


def _printed_trainer(config: Path, trainer: str, capsys) -> dict:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--trainer", str(TRAINER_CONFIGS / trainer),
              "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["trainer"]


def test_ddp_cpu_keeps_the_smoke_settings(capsys) -> None:
    trainer = _printed_trainer(SMOKE_CONFIG, "ddp_cpu.yaml", capsys)
    assert trainer["accelerator"] == "cpu" and trainer["devices"] == 2
    assert trainer["strategy"]["class_path"].endswith("DDPStrategy")
    assert trainer["strategy"]["init_args"]["process_group_backend"] == "gloo"
    # From smoke.yaml, untouched by the --trainer file:
    assert trainer["max_epochs"] == 2 and trainer["default_root_dir"] == "runs/smoke"
    assert trainer["logger"]["class_path"].endswith("CSVLogger")


@pytest.mark.parametrize(
    ("name", "strategy", "devices"),
    [("gpu.yaml", "auto", 1), ("ddp.yaml", "ddp", -1), ("fsdp.yaml", "FSDPStrategy", -1)],
)
def test_gpu_configs_parse(name: str, strategy: str, devices: int, capsys) -> None:
    # CUDA, NCCL and FSDP cannot run on the CPU-only CI: these configs are parsed and merged
    # here, not run (FSDP refuses a CPU accelerator).
    trainer = _printed_trainer(SMOKE_CONFIG.parent / "default.yaml", name, capsys)
    assert trainer["accelerator"] == "gpu" and trainer["devices"] == devices
    assert trainer["precision"] == "bf16-mixed" and trainer["max_time"] is None
    assert trainer["max_epochs"] == 12  # from the default recipe
    chosen = trainer["strategy"]
    assert (chosen if isinstance(chosen, str) else chosen["class_path"]).endswith(strategy)
    if name == "fsdp.yaml":
        policy = chosen["init_args"]["auto_wrap_policy"]
        assert any(path.endswith("BasicBlock") for path in policy)
    if name == "ddp.yaml":
        assert trainer["sync_batchnorm"] is False
