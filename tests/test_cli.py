"""The command line end to end with the smoke config: fit, validate, test, predict, errors."""

from __future__ import annotations

import json
from argparse import ArgumentError
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lightning.callbacks.prediction_writer import SkippedImagesError
from mtl_lightning.cli import main, run_cli
from mtl_lightning.module import MultiTaskModule

from .conftest import SMOKE_CONFIG

HEADLINE = ("classification/accuracy", "segmentation/miou", "detection/map_50")


def _args(tmp: Path, scenes_root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(SMOKE_CONFIG),
        "--trainer.default_root_dir", str(tmp / "runs"),
        "--data.init_args.root", str(scenes_root),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, scenes_root: Path):
    """One smoke `fit` (which also tests the best checkpoint), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    cli = run_cli(["fit", *_args(tmp, scenes_root)])
    return cli, tmp


def test_fit_writes_config_metrics_and_checkpoints(fitted) -> None:
    cli, _ = fitted
    run_dir = Path(cli.run_dir)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("val", "test"):
        for key in HEADLINE:
            value = metrics[f"{stage}/{key}"]
            assert isinstance(value, float) and 0.0 <= value <= 1.0
        assert f"{stage}/mtl/score" in metrics
    assert "val/detection/map" in metrics and "val/segmentation/pixel_accuracy" in metrics
    assert "val/classification/macro_accuracy" in metrics
    # Only {stage}/{task}/{metric} keys, and no non-scalar mAP entries.
    assert all(k.count("/") >= 2 for k in metrics)
    assert not any(k.endswith(("classes", "map_per_class")) for k in metrics)
    # Overlays of the same fixed validation images after every epoch: truth | prediction.
    epochs = sorted((run_dir / "overlays").iterdir())
    assert [e.name for e in epochs] == ["epoch000", "epoch001"]
    first = sorted(p.name for p in epochs[0].glob("*.png"))
    assert len(first) == 8 and first == sorted(p.name for p in epochs[1].glob("*.png"))
    picture = Image.open(epochs[0] / first[0])
    assert picture.size == (2 * 256 + 4, 256)  # 64 px images enlarged 4x, side by side
    # The saved config reproduces the run: it is what the user gave, not this run's folder.
    saved = (run_dir / "config.yaml").read_text()
    assert "ScenesDataModule" in saved and "test_after_fit: true" in saved



def test_the_checkpoint_holds_the_data_modules_arguments(fitted, scenes_root: Path) -> None:
    """save_hyperparameters: what the data module was built with travels in each checkpoint
    (export reads the image size from there), loadable with ``weights_only``."""
    cli, _ = fitted
    checkpoint = torch.load(Path(cli.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    saved = checkpoint["datamodule_hyper_parameters"]
    assert saved["root"] == str(scenes_root) and saved["image_size"] == cli.datamodule.image_size
    assert saved["num_train"] == cli.datamodule.config.num_train


def test_a_data_class_path_that_is_no_multitask_data_module_is_refused(tmp_path: Path) -> None:
    """The CLI takes only MultiTaskDataModule subclasses (task_info, datasets, has_split)."""
    with pytest.raises((SystemExit, ArgumentError)):
        run_cli(["fit", "--config", str(SMOKE_CONFIG), "--trainer.default_root_dir",
                 str(tmp_path / "runs"),
                 "--data", "lightning.pytorch.demos.boring_classes.BoringDataModule"],
                exit_on_error=False)

def test_reloaded_checkpoint_gives_identical_predictions(fitted, tiny_scenes) -> None:
    cli, _ = fitted
    last = Path(cli.run_dir) / "checkpoints" / "last.ckpt"
    trained = cli.trainer.lightning_module
    trained.load_state_dict(torch.load(last, weights_only=True)["state_dict"])
    reloaded = MultiTaskModule.load_from_checkpoint(last, weights_only=True)
    image = next(iter(cli.datamodule.val_dataloader()))["image"]
    trained.eval()
    reloaded.eval()
    with torch.no_grad():
        a, b = trained(image), reloaded(image)
    torch.testing.assert_close(a["classification"], b["classification"], rtol=0, atol=0)
    torch.testing.assert_close(a["segmentation"], b["segmentation"], rtol=0, atol=0)
    torch.testing.assert_close(a["detection"]["heatmap"], b["detection"]["heatmap"], rtol=0, atol=0)
    # The class names travel in the checkpoint.
    assert reloaded.tasks["detection"].class_names == cli.datamodule.task_info["detection"][
        "class_names"]


def test_validate_and_test_from_a_checkpoint(fitted, scenes_root: Path) -> None:
    cli, tmp = fitted
    best = cli.trainer.checkpoint_callback.best_model_path
    fit_metrics = json.loads((Path(cli.run_dir) / "metrics.json").read_text())
    tested = run_cli(["test", *_args(tmp, scenes_root), "--ckpt_path", best])
    metrics = json.loads((Path(tested.run_dir) / "metrics.json").read_text())
    assert tested.run_dir != cli.run_dir
    for key in HEADLINE:  # the same checkpoint on the same data gives the same numbers
        assert metrics[f"test/{key}"] == pytest.approx(fit_metrics[f"test/{key}"], abs=1e-6)
    validated = run_cli(["validate", *_args(tmp, scenes_root), "--ckpt_path", best])
    metrics = json.loads((Path(validated.run_dir) / "metrics.json").read_text())
    assert all(f"val/{key}" in metrics for key in HEADLINE)


def test_predict_writes_json_mask_and_overlay(fitted, scenes_root: Path, tmp_path: Path) -> None:
    cli, tmp = fitted
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (90, 70), 128).save(images / "gray.png")  # grayscale, other size
    Image.new("RGBA", (64, 64), (200, 10, 10, 128)).save(images / "rgba.png")
    Image.new("RGB", (100, 50), (10, 200, 10)).save(images / "photo.jpg")
    Image.new("RGB", (30, 40), (10, 20, 200)).save(images / "photo.png")  # the same stem
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "predictions"
    with pytest.raises(SkippedImagesError, match="skipped 1 image"):  # exit code 2 in main
        run_cli([
            "predict", *_args(tmp, scenes_root),
            "--ckpt_path", str(Path(cli.run_dir) / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_images", str(images),
            "--prediction_writer.output_dir", str(out),
        ])
    for name, size in [("gray.png", (70, 90)), ("rgba.png", (64, 64)), ("photo.jpg", (50, 100)),
                       ("photo.png", (40, 30))]:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["size_hw"] == list(size)
        assert {"classification", "segmentation", "detection"} <= set(record)
        assert record["classification"]["name"] in cli.datamodule.task_info["classification"][
            "class_names"]
        for box in record["detection"]:
            assert set(box) == {"box_xyxy", "class_id", "category_id", "name", "score"}
        mask = Image.open(out / f"{name}.mask.png")
        assert mask.size == (size[1], size[0])
        overlay = Image.open(out / f"{name}.overlay.png")
        assert overlay.size == (size[1], size[0]) and overlay.mode == "RGB"
    assert [s["image"] for s in json.loads((out / "skipped.json").read_text())] == [
        str(images / "broken.jpg")]


# The offline W&B run (folder, sync hint, history, media, resuming) is read back in
# tests/callbacks/test_wandb_offline.py.


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--model.backbone", "resnt18"], "Close timm names: resnet18"),
        (["--model.tasks", '{"keypoints": null}'], "available tasks: classification, depth"),
        (["--model.tasks", '{"depth": null}'], "the data provides no 'depth' labels"),
    ],
)
def test_user_errors_are_one_line(option, message, tmp_path: Path, scenes_root: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, scenes_root), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_config_typo_gets_the_cli_message(tmp_path: Path, scenes_root: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, scenes_root), "--trainer.max_epohcs", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "max_epohcs" in err and "Traceback" not in err


def test_print_config(tmp_path: Path, scenes_root: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *_args(tmp_path, scenes_root), "--print_config"])
    out = capsys.readouterr().out
    assert "backbone: resnet18" in out and "ScenesDataModule" in out


def test_a_corrupt_image_met_in_a_loader_worker_is_one_line(tmp_path: Path, capsys) -> None:
    """A JPEG whose header reads fine but whose data is cut off passes the up-front check and
    fails while a worker decodes it: the user still gets one sentence naming the file."""
    images = tmp_path / "images"
    images.mkdir()
    entries, annotations = [], []
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    for i in range(4):
        Image.fromarray(noise).save(images / f"{i}.jpg", quality=95)
        entries.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 160, "height": 160})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2,
                            "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0,
                            "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]})
    broken = images / "2.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])
    document = {"images": entries, "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}
    (tmp_path / "train.json").write_text(json.dumps(document))
    with pytest.raises(SystemExit) as exit_info:
        main([
            "fit", "--config", str(SMOKE_CONFIG),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false",
            "--data", "mtl_lightning.data.CocoDataModule",
            "--data.init_args.train_annotations", str(tmp_path / "train.json"),
            "--data.init_args.train_images", str(images),
            "--data.init_args.val_annotations", str(tmp_path / "train.json"),
            "--data.init_args.val_images", str(images),
            "--data.init_args.image_size", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "1", "--test_after_fit", "false",
        ])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mtl-lightning: error")]
    assert len(errors) == 1 and "2.jpg" in errors[0], err
    assert "Traceback" not in err


def test_fit_reports_the_kept_checkpoint(fitted) -> None:
    """metrics.json's val/... values are those of the epoch whose checkpoint is kept as best
    (the one test_after_fit tested), the latest epoch's are under last/val/..."""
    cli, _ = fitted
    metrics = json.loads((Path(cli.run_dir) / "metrics.json").read_text())
    best = cli.trainer.checkpoint_callback
    kept = metrics["kept/val/epoch"]
    assert Path(best.best_model_path).name == f"best-epoch{kept:02d}.ckpt"
    assert metrics["val/mtl/score"] == pytest.approx(float(best.best_model_score), abs=1e-6)
    assert "last/val/mtl/score" in metrics and "last/val/classification/accuracy" in metrics


def test_predict_from_a_checkpoint_alone(fitted, tmp_path: Path, monkeypatch) -> None:
    """No --config: the run's own settings; no training data is prepared or read; the results
    go into the checkpoint's run folder, whose config.yaml stays as it was."""
    from mtl_lightning.data import ScenesDataModule

    def untouchable(*args, **kwargs):
        raise AssertionError("predict prepared or set up the training data")

    monkeypatch.setattr(ScenesDataModule, "prepare_data", untouchable)
    monkeypatch.setattr(ScenesDataModule, "setup", untouchable)
    cli, _ = fitted
    run_dir = Path(cli.run_dir)
    config_before = (run_dir / "config.yaml").read_text()
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (10, 200, 10)).save(images / "photo.jpg")
    main(["predict", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
          "--data.init_args.predict_images", str(images),
          "--trainer.enable_progress_bar", "false"])
    (written,) = (run_dir / "predictions").glob("*/photo.jpg.json")  # predictions/<time>/
    record = json.loads(written.read_text())
    assert record["size_hw"] == [60, 80] and "detection" in record
    assert (run_dir / "config.yaml").read_text() == config_before


def test_predict_from_a_checkpoint_without_its_run_is_one_sentence(fitted, tmp_path: Path,
                                                                   capsys) -> None:
    cli, _ = fitted
    alone = tmp_path / "moved.ckpt"
    alone.write_bytes((Path(cli.run_dir) / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(alone), "--data.init_args.predict_images",
              str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.yaml" in err and str(alone) in err


def test_abbreviated_options_are_refused(tmp_path: Path, scenes_root: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, scenes_root), "--trainer.max_epoch", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--trainer.max_epoch" in err and "abbreviated" in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "sentence"),
    [
        (["--data.init_args.image_size", "-8"], "image_size must be an integer"),
        (["--data.init_args.tasks", "[keypoints]"], "unknown task"),
        (["--data.init_args.tasks", "[depth]"], "only with data.init_args.dense true"),
        (["--model.balancer", "nowhere.Balancer"], "No module named 'nowhere'"),
        (["--data", "mtl_lightning.data.CocoDataModule", "--data.init_args.annotations",
          "missing.json", "--data.init_args.images", "."], "missing.json"),
    ],
)
def test_config_errors_are_the_inner_sentence(option, sentence, tmp_path: Path,
                                              scenes_root: Path, capsys) -> None:
    """One line, the sentence that matters, no jsonargparse Union report or usage; and no
    empty run directory left behind."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, scenes_root), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mtl-lightning: error:")]
    assert len(errors) == 1 and sentence in errors[0], err
    assert "Union subtypes" not in err and "usage:" not in err and "Given value" not in err
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir())


def test_max_time_shorter_than_the_schedule_is_announced(tmp_path: Path, scenes_root: Path):
    with pytest.warns(UserWarning, match=r"max_time will stop training after about \d+ of the "
                                         r"20 planned epochs") as record:
        run_cli(["fit", *_args(tmp_path, scenes_root), "--trainer.max_epochs", "20",
                 "--trainer.max_time", "00:00:00:01", "--test_after_fit", "false",
                 "--overlays.num_images", "0", "--report.print_table", "false"])
    assert sum("max_time will stop" in str(w.message) for w in record) == 1


def test_warmup_steps_bound_the_warm_up(tiny_scenes) -> None:
    from types import SimpleNamespace

    def warmup(**options) -> int:
        module = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16, **options)
        module._trainer = SimpleNamespace(estimated_stepping_batches=10_000)
        return module.configure_optimizers()["lr_scheduler"]["scheduler"].warmup_t

    assert warmup() == 500  # 5 % of all planned steps
    assert warmup(warmup_steps=40) == 40
    assert warmup(warmup_steps=20_000) == 10_000


LIGHTNING_TABLE = "DataLoader 0"  # the header of Lightning's own results table


def test_evaluation_prints_one_table(tmp_path: Path, scenes_root: Path, capsys) -> None:
    """After fit's test, validate and test: the report's per-task table, not also Lightning's
    table of the same numbers as raw floats; --report.print_table false gives Lightning's."""
    tiny = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--overlays.num_images", "0"]
    fitted = run_cli(["fit", *_args(tmp_path, scenes_root, *tiny), "--test_after_fit", "true"])
    out = capsys.readouterr().out
    assert "test metrics (epoch" in out and LIGHTNING_TABLE not in out
    last = str(Path(fitted.run_dir) / "checkpoints" / "last.ckpt")
    for command, title in (("validate", "val metrics (epoch"), ("test", "test metrics (epoch")):
        run_cli([command, *_args(tmp_path, scenes_root, *tiny), "--ckpt_path", last])
        out = capsys.readouterr().out
        assert out.count(title) == 1 and LIGHTNING_TABLE not in out, (command, out)
    run_cli(["test", *_args(tmp_path, scenes_root, *tiny), "--ckpt_path", last,
             "--report.print_table", "false"])
    out = capsys.readouterr().out
    assert LIGHTNING_TABLE in out and "test metrics (epoch" not in out
