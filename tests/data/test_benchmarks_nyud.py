"""NYUD-v2 in the ATRC layout: a fabricated sample in the exact on-disk layout is read (class
ids shifted, 0 ignored; normals decoded; the data's own edges), moved by the joint transforms
(a flip negates the normals' x), cached, refused with one sentence naming a missing or
mis-shaped file (also by check-data), and trained through the CLI with its four tasks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mtl_lightning.check_data import main as check_data
from mtl_lightning.cli import main
from mtl_lightning.data.benchmarks import NYUDDataModule
from mtl_lightning.data.benchmarks.synthetic import write_nyud
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap
from mtl_lightning.shared.errors import DataError
from mtl_lightning.tasks import build_task
from tests.conftest import REPO

H, W = 42, 56


@pytest.fixture
def nyud(tmp_path: Path) -> Path:
    return write_nyud(tmp_path / "NYUDv2", {"train": 3, "val": 2}, size=(H, W))


def data(root: Path, **options) -> NYUDDataModule:
    options = {"image_size": (H, W), "batch_size": 2, "num_workers": 0, **options}
    return NYUDDataModule(root=str(root), **options)


def test_reads_every_task_as_the_published_loaders_do(nyud: Path) -> None:
    dataset = data(nyud).build_dataset("train")
    assert len(dataset) == 3 and dataset.ids == ["0000", "0001", "0002"]
    sample = dataset[1]
    raw = np.asarray(Image.open(nyud / "segmentation" / "0001.png")).astype(int)
    mask = sample["targets"]["segmentation"].numpy()
    assert (mask[raw == 0] == 255).all()  # unlabelled -> ignore
    assert (mask[raw > 0] == raw[raw > 0] - 1).all()  # ids 1..40 -> 0..39
    depth = sample["targets"]["depth"]
    assert isinstance(depth, DepthMap) and depth.shape == (1, H, W)
    assert torch.equal(depth[0], torch.from_numpy(np.load(nyud / "depth" / "0001.npy")))
    normals = sample["targets"]["normals"]
    assert isinstance(normals, NormalMap) and normals.shape == (3, H, W)
    rgb = np.asarray(Image.open(nyud / "normals" / "0001.png")).astype(np.float32)
    decoded = torch.from_numpy(2 * rgb / 255 - 1).permute(2, 0, 1)
    assert torch.allclose(normals[:, 5, 7], decoded[:, 5, 7] / decoded[:, 5, 7].norm(),
                          atol=1e-6)
    assert float(normals[:, -4:].abs().max()) == 0.0  # grey pixels: no ground truth
    assert torch.allclose(normals[:, :-4].norm(dim=0), torch.ones(H - 4, W), atol=1e-5)
    edges = sample["targets"]["edges"].numpy()
    raw_edges = np.asarray(Image.open(nyud / "edge" / "0001.png"))
    assert set(np.unique(edges)) <= {0, 1} and ((edges == 1) == (raw_edges > 0)).all()
    assert sample["has"] == dict.fromkeys(("segmentation", "depth", "normals", "edges"), True)


def test_a_flip_negates_the_normals_x_and_moves_every_map(nyud: Path) -> None:
    plain = data(nyud, hflip=0.0, scale_jitter=(1.0, 1.0), translate=0.0, color_jitter=0.0)
    flipped = data(nyud, hflip=1.0, scale_jitter=(1.0, 1.0), translate=0.0, color_jitter=0.0)
    reference = plain.build_dataset("train", plain.train_transforms())[0]["targets"]
    out = flipped.build_dataset("train", flipped.train_transforms())[0]["targets"]
    assert torch.allclose(out["normals"][0], -reference["normals"][0].flip(-1))
    assert torch.allclose(out["normals"][1:], reference["normals"][1:].flip(-1))
    for task in ("depth", "segmentation", "edges"):
        assert torch.equal(out[task], reference[task].flip(-1)), task


def test_edges_train_on_the_datas_own_labels(nyud: Path) -> None:
    module = data(nyud)
    edges = build_task("edges", None, module.task_info["edges"], task_info=module.task_info)
    assert edges.source is None and not edges.auxiliary  # a task of its own, in the score
    batch = {"image": torch.zeros(2, 3, 4, 4),
             "targets": {"edges": torch.ones(2, 4, 4, dtype=torch.uint8),
                         "segmentation": torch.zeros(2, 4, 4, dtype=torch.uint8)},
             "has": {"edges": torch.tensor([True, False]),
                     "segmentation": torch.tensor([True, True])}}
    model = SimpleNamespace(tasks={"edges": edges}, device=torch.device("cpu"),
                            _has=lambda b, n: MultiTaskModule._has(model, b, n))
    has, target = MultiTaskModule.task_labels(model, batch, "edges")
    assert has.tolist() == [True, False] and torch.equal(target, batch["targets"]["edges"])
    derived = build_task("edges", None, None)  # on data without edge labels: from the masks
    assert derived.source == "segmentation" and derived.auxiliary


def test_cached_samples_are_read_once(nyud: Path) -> None:
    module = data(nyud, cache_samples=True)
    module.setup("fit")
    loader = module.train_dataloader()  # reads the split into memory
    for folder in ("images", "segmentation", "depth", "normals", "edge"):
        for path in (nyud / folder).iterdir():
            path.unlink()
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, H, W)


def test_missing_and_mis_shaped_files_are_named(nyud: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (nyud / "normals" / "0004.png").unlink()
    with pytest.raises(DataError, match=r"1 of 2 val samples have no normals file .*0004\.png"):
        data(nyud).build_dataset("val")
    np.save(nyud / "depth" / "0001.npy", np.ones((H, W + 3), dtype=np.float32))
    problems = data(nyud).check_files()
    assert any("depth/0001.npy' is 42 x 59 but its image is 42 x 56" in p for p in problems)
    assert any("0004.png" in p for p in problems)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "mtl_lightning.data.benchmarks.NYUDDataModule",
        "init_args": {"root": str(nyud)}}}))
    assert check_data(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "depth/0001.npy' is 42 x 59" in err and "no normals file" in err


def test_label_ids_beyond_the_forty_classes_are_refused(nyud: Path) -> None:
    Image.fromarray(np.full((H, W), 60, dtype=np.uint8)).save(nyud / "segmentation" / "0000.png")
    with pytest.raises(DataError, match=r"segmentation/0000\.png' has label ids outside 0\.\.39"):
        data(nyud).build_dataset("train")[0]


@pytest.mark.slow
def test_nyud_trains_and_validates_its_four_tasks_through_the_cli(nyud: Path,
                                                                   tmp_path: Path) -> None:
    main(["fit", "--config", str(REPO / "configs" / "smoke.yaml"),
          "--data", str(REPO / "configs" / "data" / "nyud.yaml"),
          "--data.init_args.root", str(nyud), "--data.init_args.image_size", "[48, 64]",
          "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
          "--model.tasks", "{segmentation: {decoder_channels: 16}, depth: {decoder_channels: 16},"
          " normals: {decoder_channels: 16}, edges: {head_channels: 8}}",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--run_name", "nyud", "--test_after_fit", "false"])
    metrics = json.loads((tmp_path / "runs" / "nyud" / "metrics.json").read_text())
    for key in ("val/segmentation/miou", "val/depth/abs_err", "val/normals/mean_angle",
                "val/edges/f1", "train/edges/loss", "val/mtl/score"):
        assert key in metrics, (key, sorted(metrics))
