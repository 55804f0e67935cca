"""The benchmark suite (benchmarks/run.py): its reference loop computes what the module
computes, and every measurement runs end to end and writes the keys the README promises."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SMOKE_CONFIG

sys.path.insert(0, str(REPO / "benchmarks"))
from suite.common import build_cli
from suite.plain_loop import PlainLoop

RUN = REPO / "benchmarks" / "run.py"


def smoke_cli(scenes_root: Path):
    return build_cli(f"--data.init_args.root={scenes_root}", "--trainer.precision=32",
                     config=SMOKE_CONFIG)


def test_plain_loop_real_loss_is_the_modules_loss(scenes_root: Path) -> None:
    """The reference step computes the same task losses as the Lightning module, so the
    overhead ratios compare like with like."""
    cli = smoke_cli(scenes_root)
    batch = next(iter(cli.datamodule.train_dataloader()))
    model = cli.model.eval()  # batch norm from running statistics: two forwards agree
    loop = PlainLoop(model, "32", "cpu")
    model.eval()
    with torch.no_grad():
        reference = loop.total_loss(batch)
        losses, _ = model._task_losses(batch, "val")
    assert torch.allclose(reference, sum(losses.values()), rtol=1e-5)
    assert set(losses) == {"classification", "segmentation", "detection"}


def test_plain_loop_steps_change_the_weights_for_both_losses(scenes_root: Path) -> None:
    cli = smoke_cli(scenes_root)
    batch = next(iter(cli.datamodule.train_dataloader()))
    for kind in ("real", "trivial"):
        loop = PlainLoop(cli.model, "32", "cpu", loss=kind)
        head = next(cli.model.tasks["segmentation"].parameters())
        before = head.detach().clone()
        loop.step(batch)
        assert not torch.equal(before, head.detach()), kind


def test_unknown_loss_kind_is_refused(scenes_root: Path) -> None:
    with pytest.raises(ValueError, match="loss must be"):
        PlainLoop(smoke_cli(scenes_root).model, "32", "cpu", loss="zero")


def test_cuda_suite_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA suite would run")
    output = tmp_path / "cuda.json"
    process = subprocess.run([sys.executable, str(RUN), "--device", "cuda", "--json",
                              str(output)], capture_output=True, text=True, cwd=REPO)
    assert process.returncode == 0, process.stderr
    assert "skipped" in process.stdout
    assert json.loads(output.read_text())["skipped"] == "no CUDA device"


@pytest.mark.slow
def test_suite_runs_every_measurement_and_writes_its_keys(tmp_path: Path,
                                                          scenes_root: Path) -> None:
    """The whole suite at toy size (smoke config, 64 and 96 px, one timed step) gives a
    finite positive figure for every key and prints the table."""
    output = tmp_path / "suite.json"
    keys = ["train_step_overhead", "loss_overhead", "mtl_vs_single_inference_speedup",
            "loader_vs_step_ratio", "eval_overhead", "peak_rss_mb", "scaling"]
    process = subprocess.run(
        [sys.executable, str(RUN), "--config", str(SMOKE_CONFIG), "--json", str(output),
         "--quick", "--rounds", "2", "--steps", "2", "--warmup", "1", "--sizes", "64,96",
         "--data-sizes", "16,32",
         "--only", ",".join(keys), "--", f"--data.init_args.root={scenes_root}"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(output.read_text())
    for key in keys[:-1]:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0
    assert "FAILED" not in process.stdout, process.stdout
    # the diagnostics that split the two overheads
    for key, part in (("train_step_overhead", "in_memory_ratio"),
                      ("eval_overhead", "ratio_without_overlays")):
        assert result[f"{key}_details"][part]["median"] > 0
    assert "Lightning on in-memory batches" in process.stdout
    assert result["peak_rss_mb"] > 100  # a Python process with torch loaded
    assert result["mtl_vs_single_inference_speedup"] > 1.0  # one backbone instead of three
    scaling = result["scaling"]
    assert set(scaling) == {"size_64", "size_96", "tasks_1", "tasks_2", "tasks_3",
                            "tasks_3_aux", "data_16_cache_off", "data_16_cache_on",
                            "data_32_cache_off", "data_32_cache_on"}
    assert result["eval_overhead_details"]["breakdown_s"]["forward"] > 0
    assert scaling["size_96"]["step_ms"]["median"] > scaling["size_64"]["step_ms"]["median"]
    assert result["machine"]["torch"] == torch.__version__
    for line in ("train_step_overhead", "loss_overhead", "eval_overhead", "peak_rss_mb"):
        assert line in process.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_script_starts(script: str) -> None:
    """Each script imports what it needs (they share benchmarks/suite/) and parses --help."""
    process = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"],
                             capture_output=True, text=True, cwd=REPO)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "usage" in process.stdout


def test_busy_time_counts_overlapping_kernels_once() -> None:
    from suite.gpu import merged_busy_seconds

    assert merged_busy_seconds([]) == 0.0
    # [0, 4] and [2, 5] overlap (5 busy), [7, 8] is separate, [7.2, 7.5] lies inside it
    assert merged_busy_seconds([(7.0, 8.0), (2.0, 5.0), (0.0, 4.0), (7.2, 7.5)]) == 6.0


def test_gpu_throughput_part_runs_on_the_cpu(scenes_root: Path, monkeypatch) -> None:
    """The ``gpu`` measurement's images/s part is device-agnostic (the busy fraction needs
    CUDA), so its plumbing is exercised here with two small variants."""
    import suite.gpu as gpu
    from suite.settings import QUICK

    monkeypatch.setattr(gpu, "VARIANTS", {"default_128px": ["--trainer.precision=32"],
                                          "wider": ["--trainer.precision=32",
                                                    "--model.neck_channels=32"]})
    settings = dataclasses.replace(QUICK, rounds=3, steps=1, warmup=1,  # odd: medians agree
                                   gpu_variants=("default_128px", "wider"))
    result = gpu.gpu_extras(settings, "cpu", SMOKE_CONFIG, [], lightning_step_ms=100.0)
    for name in ("default_128px", "wider"):
        rate = result[f"{name}_train_images_per_s"]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert result[f"{name}_batch_size"] > 0
        expected = 1e3 * result[f"{name}_batch_size"] / rate["median"]
        assert result[f"{name}_step_ms"]["median"] == pytest.approx(expected, rel=1e-6)
    assert "gpu_busy_fraction" not in result  # needs CUDA
