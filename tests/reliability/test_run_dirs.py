"""Which run directory a process writes to: a new one per run, the latest (or named) one for
``fit --ckpt_path last``, and one shared by all processes that torchrun or srun started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtl_lightning.runs import LAST_CHECKPOINT, RUN_DIR_ENV, new_run_dir

LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID",
                    "SLURM_NTASKS", "SLURM_PROCID", RUN_DIR_ENV)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _in_new_process(monkeypatch: pytest.MonkeyPatch, base: Path, name: str | None = None,
                    resume: bool = False) -> Path:
    """``new_run_dir`` as a freshly started process sees it (nothing inherited)."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    return new_run_dir(base, name, resume=resume)


def _with_last_checkpoint(run_dir: Path) -> Path:
    (run_dir / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (run_dir / LAST_CHECKPOINT).write_bytes(b"")
    return run_dir


def test_each_run_gets_its_own_directory(tmp_path: Path, monkeypatch) -> None:
    first = _in_new_process(monkeypatch, tmp_path, "exp")
    second = _in_new_process(monkeypatch, tmp_path, "exp")
    assert (first.name, second.name) == ("exp", "exp-2")
    assert os.environ[RUN_DIR_ENV] == str(second)  # what Lightning's DDP children inherit
    monkeypatch.setenv("LOCAL_RANK", "1")  # such a child joins its parent's directory
    assert new_run_dir(tmp_path, "exp") == second


def test_ckpt_path_last_continues_the_latest_or_the_named_run(tmp_path: Path, monkeypatch) -> None:
    older = _with_last_checkpoint(tmp_path / "older")
    newer = _with_last_checkpoint(tmp_path / "newer")
    os.utime(older / LAST_CHECKPOINT, (1, 1))
    assert _in_new_process(monkeypatch, tmp_path, resume=True) == newer
    assert _in_new_process(monkeypatch, tmp_path, "older", resume=True) == older
    # A named run with nothing to resume yet (a requeued job's first start) is created.
    assert _in_new_process(monkeypatch, tmp_path, "first", resume=True) == tmp_path / "first"
    empty = tmp_path / "empty"
    fresh = _in_new_process(monkeypatch, empty, resume=True)  # no run at all: a new one
    assert fresh.parent == empty and fresh.is_dir()


@pytest.mark.parametrize(
    ("environment", "expected"),
    [({"TORCHELASTIC_RUN_ID": "job7", "WORLD_SIZE": "4"}, "torchrun-job7"),
     ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "8"}, "slurm-42")],
)
def test_processes_launched_together_share_one_directory(
    environment: dict[str, str], expected: str, tmp_path: Path, monkeypatch
) -> None:
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    chosen = []
    for rank in range(3):
        monkeypatch.setenv("LOCAL_RANK" if "WORLD_SIZE" in environment else "SLURM_PROCID",
                           str(rank))
        chosen.append(_in_new_process(monkeypatch, tmp_path))
    assert chosen == [tmp_path / expected] * 3
    named = _in_new_process(monkeypatch, tmp_path, "mine")
    assert named == _in_new_process(monkeypatch, tmp_path, "mine") == tmp_path / "mine"


def test_torchrun_without_a_name_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default --rdzv_id
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--run_name"):
        _in_new_process(monkeypatch, tmp_path)


def test_a_name_taken_between_check_and_creation_gets_a_suffix(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Another process creates ``exp`` just before this one does (the race two runs started
    in the same second have): this one takes ``exp-2`` instead of failing."""
    real_mkdir = Path.mkdir

    def competitor_first(self: Path, *args, **kwargs) -> None:
        if self == tmp_path / "exp" and not self.exists():
            real_mkdir(self)  # the other process wins the race
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", competitor_first)
    assert _in_new_process(monkeypatch, tmp_path, "exp") == tmp_path / "exp-2"


@pytest.mark.parametrize("name", ["../../elsewhere", "..", "a/b", "/tmp/abs"])
def test_run_name_cannot_leave_default_root_dir(name: str, tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "a" / "b" / "runs"
    with pytest.raises(ValueError, match="plain folder name"):
        _in_new_process(monkeypatch, base, name)
    assert not (tmp_path / "a" / "elsewhere").exists() and not (tmp_path / "elsewhere").exists()


def test_default_root_dir_under_a_file_is_one_sentence(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"'.*results' is a file") as error:
        _in_new_process(monkeypatch, blocker / "runs")
    assert "\n" not in str(error.value)


def test_a_failed_command_removes_only_the_empty_run_directory_it_made(
    tmp_path: Path, monkeypatch
) -> None:
    from mtl_lightning.runs import keep_run_dirs, remove_unused_run_dirs

    keep_run_dirs()  # forget the folders earlier tests made
    older = tmp_path / "older"
    older.mkdir()  # another run's folder, empty: not this process's to remove
    failed = _in_new_process(monkeypatch, tmp_path, "failed")
    (failed / "checkpoints").mkdir()
    (failed / "config.yaml").write_text("model: {}")
    worked = _in_new_process(monkeypatch, tmp_path, "worked")
    (worked / "checkpoints").mkdir()
    (worked / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert remove_unused_run_dirs() == [failed]
    assert older.is_dir() and worked.is_dir() and not failed.exists()
    succeeded = _in_new_process(monkeypatch, tmp_path, "succeeded")
    keep_run_dirs()  # the command succeeded: its folder stays even if empty
    assert remove_unused_run_dirs() == [] and succeeded.is_dir()
