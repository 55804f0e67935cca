"""The README's "Train on your own COCO data" commands, as printed, on fabricated sets with
the properties of real data (one category; derived multi-label image labels over images of
one, two and four classes with 0-based ids and separate split files; a crowd RLE region and
non-contiguous ids), each for one tiny epoch with overlays and the W&B table, then predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import wandb

from mtl_lightning.cli import main
from tests.conftest import FRUITS_NUTS
from tests.realdata import fabricate
from tests.realdata.conftest import as_a_user
from tests.realdata.readme import commands, run_dir, substitute, tiny

SECTION = "Train on your own COCO data"


def _command(has: str) -> list[str]:
    """The section's fit command that passes option ``has`` (exactly one)."""
    (found,) = [c for c in commands(SECTION) if c[0] == "fit" and any(has in w for w in c)]
    return found


def _placeholders(paths: dict[str, Path]) -> dict[str, Path]:
    names = {"train_annotations": "my/train.json", "train_images": "my/train_images/",
             "val_annotations": "my/val.json", "val_images": "my/val_images/",
             "annotations": "my/annotations.json", "images": "my/images/"}
    return {names[key]: path for key, path in paths.items()}


def _fit_and_predict(command: list[str], tmp_path: Path) -> tuple[Path, dict]:
    """Run the fit command tiny, check what the run wrote, predict with its checkpoint."""
    main([*command, *tiny(tmp_path / "runs")])
    wandb.finish()  # where the user's process would end
    run = run_dir(tmp_path / "runs")
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    overlays = list((run / "overlays").rglob("*.png"))
    assert overlays, "no overlay was drawn"
    assert list((run / "wandb").glob("offline-run-*"))
    pictures = tmp_path / "photos"
    fabricate.draw(pictures / "a.jpg", [fabricate.Thing(0, (4, 4, 30, 20))], seed=7)
    fabricate.draw(pictures / "b.png", [], seed=8, size=(50, 90))
    out = tmp_path / "predictions"
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint),
          "--data.init_args.predict_images", str(pictures),
          "--prediction_writer.output_dir", str(out),
          "--trainer.default_root_dir", str(tmp_path / "predict_runs"),
          "--trainer.logger", "false"])
    assert json.loads((out / "b.png.json").read_text())["size_hw"] == [90, 50]
    hyper = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    return run, {"metrics": metrics, "task_info": hyper["task_info"]}


def test_readme_commands_need_only_the_users_paths() -> None:
    """No command of the section carries the example's paths or `null` overrides."""
    for command in commands(SECTION):
        assert not any(w.endswith("null") for w in command), command
        assert any("coco.yaml" in w or "fruits_nuts.yaml" in w for w in command) or (
            command[0] == "check-data")


@pytest.fixture(scope="module")
def pedestrians(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The single-file command on a one-category set, fitted and predicted once."""
    tmp = tmp_path_factory.mktemp("pedestrians")
    with as_a_user(tmp):
        paths = fabricate.single_category(tmp / "pedestrians")
        command = substitute(_command("--data.init_args.annotations"), _placeholders(paths))
        return _fit_and_predict(command, tmp)


def test_single_category_trains_segmentation_and_detection(pedestrians) -> None:
    _, result = pedestrians
    assert set(result["task_info"]) == {"segmentation", "detection"}
    assert "val/segmentation/miou" in result["metrics"]
    assert not any("classification" in key for key in result["metrics"])


def test_readme_predict_command_with_a_coco_checkpoint(pedestrians, tmp_path: Path) -> None:
    run, _ = pedestrians
    (command,) = commands("Predict")
    pictures = tmp_path / "my_images"
    fabricate.draw(pictures / "street.jpg", [fabricate.Thing(0, (4, 4, 30, 20))], seed=3)
    main([*substitute(command, {"runs/default/<run>/checkpoints/last.ckpt":
                                run / "checkpoints" / "last.ckpt", "my_images/": pictures}),
          "--trainer.logger", "false"])
    written = list((run / "predictions").rglob("street.jpg.json"))
    assert written, "predict wrote no street.jpg.json into the checkpoint's run folder"
    record = json.loads(written[0].read_text())
    assert "detection" in record and "classification" not in record


def test_separate_files_with_derived_multilabel_classes(tmp_path: Path) -> None:
    paths = fabricate.board_multilabel(tmp_path / "board")
    command = substitute(_command("--data.init_args.train_annotations"), _placeholders(paths))
    _, result = _fit_and_predict(command, tmp_path)
    info = result["task_info"]
    assert info["classification"]["multilabel"]
    assert info["detection"]["category_ids"] == [0, 1, 2, 3]
    assert "val/classification/loss" in result["metrics"]


def test_crowd_region_and_noncontiguous_ids(tmp_path: Path) -> None:
    paths = fabricate.crowd_noncontiguous(tmp_path / "sample")
    command = substitute(_command("--data.init_args.annotations"), _placeholders(paths))
    _, result = _fit_and_predict(command, tmp_path)
    assert result["task_info"]["detection"]["category_ids"] == [1, 5, 18, 44, 90]
    assert "val/detection/map_50" in result["metrics"]


def test_check_data_command_accepts_each_set(tmp_path: Path) -> None:
    (command,) = [c for c in commands(SECTION)
                  if c[0] == "check-data" and any("--annotations" in w for w in c)]
    for paths in (fabricate.board_multilabel(tmp_path / "board"),
                  fabricate.single_category(tmp_path / "one"),
                  fabricate.crowd_noncontiguous(tmp_path / "crowd")):
        train = {"my/train.json": paths.get("train_annotations", paths.get("annotations")),
                 "my/train_images/": paths.get("train_images", paths.get("images"))}
        with pytest.raises(SystemExit) as exit_info:
            main(substitute(command, train))
        assert exit_info.value.code == 0


@pytest.mark.skipif(not FRUITS_NUTS.is_dir(), reason="../shared/data/fruits_nuts is absent")
def test_the_example_config_and_its_cache_option(tmp_path: Path) -> None:
    for number, command in enumerate(c for c in commands(SECTION) if c[0] == "fit"
                                     and any("fruits_nuts.yaml" in w for w in c)):
        main([*command, *tiny(tmp_path / f"runs{number}", overlays=False)])
        run = run_dir(tmp_path / f"runs{number}")
        assert (run / "checkpoints" / "last.ckpt").is_file()
    (check,) = [c for c in commands(SECTION) if c[0] == "check-data" and "--config" in c]
    with pytest.raises(SystemExit) as exit_info:
        main(check)
    assert exit_info.value.code == 0


@pytest.mark.parametrize("option", [["--model.tasks", "{classification: null}"],
                                    ["--data.init_args.tasks", "[classification, detection]"]])
def test_a_named_task_the_file_cannot_label_is_one_sentence(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = fabricate.single_category(tmp_path / "one")
    command = substitute(_command("--data.init_args.annotations"), _placeholders(paths))
    with pytest.raises(SystemExit) as exit_info:
        main([*command, *option, "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'classification'" in line and "segmentation" in line and "Union" not in line
