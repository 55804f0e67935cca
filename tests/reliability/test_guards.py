"""Guards: a checkpoint for another task set, backbone or class list is refused with one
sentence; running out of accelerator memory says what to change."""

from __future__ import annotations

import pytest

from mtl_lightning.module import CheckpointMismatchError, MultiTaskModule, checkpoint_mismatch

INFO = {
    "classification": {"num_classes": 3, "class_names": ["a", "b", "c"]},
    "segmentation": {"num_classes": 3, "class_names": ["background", "x", "y"]},
}


def _hparams(**changes) -> dict:
    hparams = {"tasks": {"classification": None, "segmentation": None}, "task_info": INFO,
               "backbone": "resnet18", "backbone_kwargs": None, "neck_channels": 16}
    hparams.update(changes)
    return hparams


def test_identical_hyperparameters_fit() -> None:
    assert checkpoint_mismatch(_hparams(), _hparams()) == []


@pytest.mark.parametrize("changes, words", [
    ({"tasks": {"classification": None}}, "tasks"),
    ({"backbone": "resnet34"}, "backbone is 'resnet34'"),
    ({"task_info": {**INFO, "classification": {"num_classes": 3,
                                               "class_names": ["a", "b", "z"]}}},
     "classification classes"),
])
def test_each_difference_is_named(changes: dict, words: str) -> None:
    problems = checkpoint_mismatch(_hparams(**changes), _hparams())
    assert len(problems) == 1 and words in problems[0]


def test_loading_a_mismatched_checkpoint_raises_one_sentence() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=16)
    checkpoint = {"hyper_parameters": _hparams(backbone="resnet34"), "state_dict": {}}
    with pytest.raises(CheckpointMismatchError, match=r"backbone is 'resnet34'.*config\.yaml"):
        model.on_load_checkpoint(checkpoint)


def test_out_of_memory_is_one_line_with_what_to_change(monkeypatch, capsys) -> None:
    import torch

    import mtl_lightning.cli as cli

    def explode(args, **options):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "run_cli", explode)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", "configs/smoke.yaml"])
    assert exit_info.value.code == 3
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "batch_size" in message and "bf16-mixed" in message
