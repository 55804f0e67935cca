"""``mtl-lightning check-data``: reports, exit codes, configs, and the real fruits_nuts data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mtl_lightning import check_data as check_data_module
from mtl_lightning.check_data import check_files, main
from tests.conftest import FRUITS_NUTS


def _write_dataset(folder: Path, name: str = "tiny.json", duplicate_image: bool = False) -> Path:
    """Two 32x24 PNGs with one box each; optionally a duplicated image id (fatal)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for image_id in (1, 2):
        Image.new("RGB", (32, 24)).save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 32,
                       "height": 24})
    if duplicate_image:
        images.append(dict(images[0]))
    document = {
        "images": images,
        "categories": [{"id": 1, "name": "nut"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 30, 10]}
                        for i in (1, 2)],
    }
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def test_clean_file_prints_report_and_exits_0(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    annotations = _write_dataset(tmp_path)
    code = main(["--annotations", str(annotations), "--images", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "annotations per category:" in out and "nut  2" in out
    assert "images usable per task:" in out and "boxes by COCO size: small 2" in out
    # boxes [2, 2, 30, 10] reach x=32, the image edge: fine, nothing clipped
    assert "problems: none" in out


def test_fatal_file_exits_1_and_lists_the_problem(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    annotations = _write_dataset(tmp_path, duplicate_image=True)
    code = main(["check-data", "--annotations", str(annotations), "--images", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "[fatal] duplicate_image_id" in out and "duplicate image ids 1;" in out


def test_unreadable_json_prints_one_sentence(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    code = main(["--annotations", str(broken), "--images", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "malformed JSON at line 1" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1


def test_max_image_pixels_option_drops_big_images(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    annotations = _write_dataset(tmp_path)
    code = main(["--annotations", str(annotations), "--images", str(tmp_path),
                 "--max_image_pixels", "100"])
    out = capsys.readouterr().out
    assert code == 1  # every image dropped: no trainable images
    assert "image_too_large" in out and "no trainable images" in out


def test_config_checks_every_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write_dataset(tmp_path / "train", "train.json")
    val = _write_dataset(tmp_path / "val", "val.json", duplicate_image=True)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({
        "class_path": "mtl_lightning.data.CocoDataModule",
        "init_args": {"train_annotations": str(train), "train_images": str(train.parent),
                      "val_annotations": str(val), "val_images": str(val.parent)},
    }))
    config = tmp_path / "run.yaml"
    config.write_text("data: data.yaml\n")  # a path, resolved next to the config
    code = main(["--config", str(config)])
    out = capsys.readouterr().out
    assert code == 1  # val is fatal
    assert "== " + str(train) + " ==" in out and "== " + str(val) + " ==" in out


def test_config_without_coco_data_has_nothing_to_check(capsys: pytest.CaptureFixture) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    assert main(["--config", str(config)]) == 0
    assert "nothing to check" in capsys.readouterr().out


def test_missing_arguments_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--annotations", "a.json"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(not FRUITS_NUTS.is_dir(),
                    reason=f"the real-photo dataset is not at {FRUITS_NUTS}")
def test_fruits_nuts_photographs_are_clean(capsys: pytest.CaptureFixture) -> None:
    annotations, images = FRUITS_NUTS / "annotations.json", FRUITS_NUTS / "images"
    report = check_files(str(annotations), str(images))
    assert report.fatal == []
    assert report.num_annotations == 165 and report.num_images == 18
    assert report.annotations_per_category == {"date": 71, "fig": 41, "hazelnut": 53}
    assert main(["--annotations", str(annotations), "--images", str(images)]) == 0
    assert "hazelnut  53" in capsys.readouterr().out


@pytest.mark.skipif(not FRUITS_NUTS.is_dir(),
                    reason=f"the real-photo dataset is not at {FRUITS_NUTS}")
def test_config_with_one_split_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "mtl_lightning.data.CocoDataModule",
        "init_args": {"annotations": str(FRUITS_NUTS / "annotations.json"),
                      "images": str(FRUITS_NUTS / "images"), "val_fraction": 0.2},
    }}))
    assert main(["--config", str(config)]) == 0
    assert capsys.readouterr().out.count("images: 18    annotations: 165") == 1
    data_group = tmp_path / "coco.yaml"  # like configs/data/coco.yaml: class_path at the top
    data_group.write_text(yaml.safe_dump(yaml.safe_load(config.read_text())["data"]))
    assert main(["--config", str(data_group)]) == 0
    assert "annotations: 165" in capsys.readouterr().out


def _truncate_second_image(folder: Path) -> None:
    """Replace 2.png by a JPEG cut in half (its header still reads)."""
    noise = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "2.jpg", quality=95)
    data = (folder / "2.jpg").read_bytes()
    (folder / "2.png").write_bytes(data[: len(data) // 2])


def test_pixels_are_decoded_for_small_sets_or_on_request(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = _write_dataset(tmp_path)
    _truncate_second_image(tmp_path)
    base = ["--annotations", str(annotations), "--images", str(tmp_path)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "[dropped] undecodable_image" in out and "pixels: every image decoded" in out
    assert main([*base, "--decode", "false"]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "headers only (--decode false)" in out
    monkeypatch.setattr(check_data_module, "DECODE_AUTO_IMAGES", 1)  # 2 images: over it
    assert main(base) == 0
    assert "headers only (the file lists more than 1 images)" in capsys.readouterr().out
    assert main([*base, "--decode", "true"]) == 0
    assert "[dropped] undecodable_image" in capsys.readouterr().out


def test_config_tasks_make_a_missing_task_fatal(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    annotations = _write_dataset(tmp_path)  # boxes only: no masks
    config = tmp_path / "run.yaml"
    init_args = {"annotations": str(annotations), "images": str(tmp_path)}
    config.write_text(yaml.safe_dump({"data": {"init_args": init_args}}))
    assert main(["--config", str(config)]) == 0
    assert "tasks with labels (what fit can train from this file): detection" in \
        capsys.readouterr().out
    init_args["tasks"] = ["detection", "segmentation"]
    config.write_text(yaml.safe_dump({"data": {"init_args": init_args}}))
    assert main(["--config", str(config)]) == 1
    assert "no labels for the 'segmentation' task" in capsys.readouterr().out
