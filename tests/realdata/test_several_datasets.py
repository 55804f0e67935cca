"""The README's "Several datasets, partial labels" section, as printed: the example config
on the folders it names, and the CamVid snippet (``_P`` masks, no background class, void
pixels) next to a VOC folder whose splits hold different class subsets; one tiny epoch each
with overlays and the W&B table, then predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wandb
import yaml

from mtl_lightning.cli import main
from tests.conftest import REPO
from tests.realdata import fabricate
from tests.realdata.conftest import as_a_user
from tests.realdata.readme import commands, run_dir, tiny, yaml_blocks

SECTION = "Several datasets, partial labels"


def _predict(run: Path, tmp_path: Path) -> dict:
    pictures = tmp_path / "photos"
    fabricate.draw(pictures / "a.jpg", [fabricate.Thing(0, (4, 4, 30, 20))], seed=5)
    out = tmp_path / "predictions"
    main(["predict", "--config", str(run / "config.yaml"),
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--data.init_args.predict_images", str(pictures),
          "--prediction_writer.output_dir", str(out),
          "--trainer.default_root_dir", str(tmp_path / "predict_runs"),
          "--trainer.logger", "false"])
    return json.loads((out / "a.jpg.json").read_text())


def test_the_example_config_runs_as_written(tmp_path: Path) -> None:
    fabricate.multisource_example(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the command's relative paths
    (command,) = commands(SECTION)
    with as_a_user(tmp_path, cwd=tmp_path):
        main([*command, *tiny(tmp_path / "runs")])
        wandb.finish()
        run = run_dir(tmp_path / "runs")
        metrics = json.loads((run / "metrics.json").read_text())
        for key in ("val/segmentation/miou", "val/detection/map_50", "train/classification/loss"):
            assert key in metrics
        pictures = sorted(p.name for p in (run / "overlays").rglob("*.png"))
        assert len(pictures) == 4, pictures  # four images of two sources, none overwritten
        assert {"classification", "segmentation", "detection"} <= set(_predict(run, tmp_path))


def test_camvid_snippet_and_voc_splits_with_class_subsets(tmp_path: Path) -> None:
    (snippet,) = [b for b in yaml_blocks(SECTION) if isinstance(b, list)]
    (camvid,) = snippet
    train = fabricate.camvid_folder(tmp_path / "camvid" / "train", void=11)
    val = fabricate.camvid_folder(tmp_path / "camvid" / "val", count=3, void=11)
    camvid.update(images=str(train["images"]), masks=str(train["masks"]))
    voc = fabricate.voc_subsets(tmp_path / "fridge")
    folder = {"kind": "voc", "images": str(voc["images"]), "annotations": str(voc["annotations"])}
    sources = [
        camvid,
        {**camvid, "name": "camvid_val", "split": "val", "images": str(val["images"]),
         "masks": str(val["masks"])},
        {**folder, "name": "fridge", "split": "train", "ids": str(voc["train_ids"])},
        {**folder, "name": "fridge_val", "split": "val", "ids": str(voc["val_ids"])},
    ]
    config = tmp_path / "camvid_fridge.yaml"
    config.write_text(yaml.safe_dump({"class_path": "mtl_lightning.data.MultiSourceDataModule",
                                      "init_args": {"sources": sources}}))
    with pytest.warns(UserWarning, match=r"val sources \(e\.g\. 'fridge_val'\) label detection "
                      r"without the classes \['carton', 'milk'\]"):
        main(["fit", "--config", "configs/default.yaml", "--data", str(config),
              *tiny(tmp_path / "runs")])
    wandb.finish()
    run = run_dir(tmp_path / "runs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/segmentation/miou" in metrics and "val/detection/map_50" in metrics
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["sources"][0]["mask_suffix"] == "_P"
    assert set(_predict(run, tmp_path)) >= {"segmentation", "detection"}
