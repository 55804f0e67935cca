"""Checkpoints on a hostile file system: a full disk never leaves a truncated checkpoint and
says so in one sentence; files that are not checkpoints of this project are refused in one
sentence by every command that takes ``--ckpt_path``."""

from __future__ import annotations

import errno
import json
import pickle
import resource
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

import mtl_lightning.checkpoint_io as checkpoint_io
from mtl_lightning.checkpoint_io import (
    CheckpointWriteError,
    NotACheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from mtl_lightning.cli import main

from .helpers import cli_args, load, run_dirs


def _disk_full_after(nbytes: int):
    """A ``torch.save`` that writes ``nbytes`` and then fails as a full disk does."""
    def save(obj, file) -> None:
        file.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_partial_file(
    tmp_path: Path, monkeypatch
) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    monkeypatch.setattr(checkpoint_io.torch, "save", _disk_full_after(1000))
    with pytest.raises(CheckpointWriteError) as error:
        write_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    message = str(error.value)
    assert str(target.parent) in message and "MB free" in message and "No space" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))


class LimitFileSize(Callback):
    """From epoch ``epoch`` on, no file may grow beyond ``nbytes`` (``RLIMIT_FSIZE``): a
    write past it fails with an OS error, as on a full disk, leaving a partial file."""

    def __init__(self, epoch: int, nbytes: int) -> None:
        self.epoch, self.nbytes = epoch, nbytes

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (self.nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.timeout(300)
def test_fit_on_a_full_disk_stops_with_one_sentence_and_loadable_files(
    tmp_path: Path, scenes: Path, capsys
) -> None:
    runs = tmp_path / "runs"
    limit = LimitFileSize(epoch=1, nbytes=64 * 1024)  # checkpoints are larger, json smaller
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        from mtl_lightning import cli

        original = cli.MultiTaskCLI.instantiate_trainer

        def with_limit(self, **kwargs):
            trainer = original(self, **kwargs)
            trainer.callbacks.insert(0, limit)
            return trainer

        cli.MultiTaskCLI.instantiate_trainer = with_limit
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *cli_args(runs, scenes, **{"--trainer.max_epochs": "3"})])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
        cli.MultiTaskCLI.instantiate_trainer = original
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    (run_dir,) = run_dirs(runs)
    assert len(errors) == 1 and str(run_dir / "checkpoints") in errors[0], errors
    assert "MB free" in errors[0] and "Traceback" not in errors[0]
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    assert checkpoints and all(p.suffix == ".ckpt" for p in checkpoints)  # no partial file
    for path in checkpoints:  # each one written in epoch 0, whole
        assert load(path)["epoch"] == 0
    assert "val/mtl/score" in json.loads((run_dir / "metrics.json").read_text())


class Payload:
    """Pickled, it would create a file when unpickled with ``weights_only=False``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _foreign_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.ckpt" for name in ("pickle", "malicious", "truncated",
                                                             "other_project", "text")}
    files["pickle"].write_bytes(pickle.dumps({"a": 1}))
    torch.save({"state_dict": {}, "evil": Payload(tmp_path / "pwned")}, files["malicious"])
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, files["other_project"])
    files["truncated"].write_bytes(files["other_project"].read_bytes()[:200])
    files["text"].write_text("hello")
    return files


@pytest.mark.parametrize("kind", ["pickle", "malicious", "truncated", "other_project", "text"])
def test_read_checkpoint_refuses_foreign_files(kind: str, tmp_path: Path) -> None:
    path = _foreign_files(tmp_path)[kind]
    with pytest.raises(NotACheckpointError, match="is not a checkpoint of mtl_lightning"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("command", "kind"), [
    ("fit", "malicious"), ("fit", "pickle"), ("validate", "truncated"),
    ("test", "other_project"), ("predict", "malicious"),
])
def test_commands_refuse_foreign_checkpoints_in_one_line(
    command: str, kind: str, tmp_path: Path, scenes: Path, capsys
) -> None:
    path = _foreign_files(tmp_path)[kind]
    extra = ["--data.init_args.predict_images", str(tmp_path)] if command == "predict" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, *cli_args(tmp_path / "runs", scenes, *extra), "--ckpt_path", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mtl-lightning: error:")]
    assert len(errors) == 1 and str(path) in errors[0], err
    assert "not a checkpoint of mtl_lightning" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "runs").exists() or not run_dirs(tmp_path / "runs")


def test_export_refuses_a_foreign_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    path = _foreign_files(tmp_path)["malicious"]
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(path), "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a checkpoint of mtl_lightning" in lines[0]


def test_a_write_error_raised_while_torch_closes_the_archive_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save can report a full disk as a RuntimeError from closing its zip archive, with
    the OSError as context: still one sentence, no partial file, the old checkpoint intact."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")

    def failing_save(obj: object, file: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    def failing_save_with_context(obj: object, file: object) -> None:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904

    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save_with_context)
    with pytest.raises(CheckpointWriteError, match="File too large"):
        checkpoint_io.write_checkpoint({"state_dict": {}}, target)
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.partial"))
    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save)  # no OSError in its chain...
    with pytest.raises(RuntimeError, match="unexpected pos"):  # ...is not ours to rename
        checkpoint_io.write_checkpoint({"state_dict": {}}, target)
