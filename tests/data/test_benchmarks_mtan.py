"""NYUv2 and Cityscapes in the MTAN layout: fabricated samples in the real on-disk layout are
read, transformed (a flip negates the normals' x), refused with one sentence when a file is
missing or mis-shaped, and trained through the CLI with every task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_lightning.cli import main
from mtl_lightning.data.benchmarks import CityscapesDataModule, MtanLayoutDataset, NYUv2DataModule
from mtl_lightning.data.coco.validation import DataError
from mtl_lightning.data.transforms import train_transforms
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap
from tests.conftest import REPO

H, W = 24, 32


def fabricate_mtan(root: Path, splits: dict[str, int], folders: dict[str, tuple[int, ...]],
                   classes: int = 13, seed: int = 0) -> Path:
    """``root/{split}/{folder}/<i>.npy`` with the real shapes and dtypes (float images in
    [0, 1], labels with -1 = ignore, depth with 0 = invalid, unit normals with zeros)."""
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for folder in ("image", *folders):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy",
                    rng.random((H, W, 3), dtype=np.float32))
            for folder in folders:
                if folder.startswith("label"):
                    label = rng.integers(-1, classes, (H, W)).astype(np.float32)
                    np.save(root / split / folder / f"{i}.npy", label)
                elif folder == "depth":
                    depth = rng.uniform(0.5, 8.0, (H, W, 1)).astype(np.float32)
                    depth[:4] = 0  # no ground truth in the top rows
                    np.save(root / split / folder / f"{i}.npy", depth)
                else:
                    normal = rng.normal(size=(H, W, 3)).astype(np.float32)
                    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                    normal[-3:] = 0
                    np.save(root / split / folder / f"{i}.npy", normal)
    return root


NYU_FOLDERS = {"label": (), "depth": (), "normal": ()}


@pytest.fixture
def nyuv2(tmp_path: Path) -> Path:
    return fabricate_mtan(tmp_path / "nyuv2", {"train": 4, "val": 2}, NYU_FOLDERS)


def test_reads_every_task_in_the_published_layout(nyuv2: Path) -> None:
    folders = {"segmentation": "label", "depth": "depth", "normals": "normal"}
    dataset = MtanLayoutDataset(nyuv2, "train", folders, num_classes=13, source="nyuv2")
    assert len(dataset) == 4
    sample = dataset[1]
    raw_label = np.load(nyuv2 / "train" / "label" / "1.npy")
    mask = sample["targets"]["segmentation"]
    assert mask.dtype == torch.uint8 and mask.shape == (H, W)
    assert bool((mask[torch.from_numpy(raw_label == -1)] == 255).all())
    assert bool((mask[torch.from_numpy(raw_label >= 0)] < 13).all())
    depth = sample["targets"]["depth"]
    assert isinstance(depth, DepthMap) and depth.shape == (1, H, W)
    assert float(depth[0, :4].abs().max()) == 0.0
    normals = sample["targets"]["normals"]
    assert isinstance(normals, NormalMap) and normals.shape == (3, H, W)
    assert sample["meta"]["source"] == "nyuv2" and sample["meta"]["orig_size"] == (H, W)


def test_a_horizontal_flip_negates_the_normals_x_and_moves_depth_with_the_image(
        nyuv2: Path) -> None:
    folders = {"depth": "depth", "normals": "normal"}
    plain = MtanLayoutDataset(nyuv2, "train", folders)
    flip = train_transforms(32, ("depth", "normals"), hflip=1.0, scale=(1.0, 1.0),
                            translate=0.0, color_jitter=0.0)
    flipped = MtanLayoutDataset(nyuv2, "train", folders, transforms=flip)
    # 24 x 32 images resized to 32 x 32: compare against the same resize without the flip
    no_flip = train_transforms(32, ("depth", "normals"), hflip=0.0, scale=(1.0, 1.0),
                               translate=0.0, color_jitter=0.0)
    reference = MtanLayoutDataset(nyuv2, "train", folders, transforms=no_flip)[0]["targets"]
    assert len(plain) == 4
    out = flipped[0]["targets"]
    assert torch.allclose(out["normals"][0], -reference["normals"][0].flip(-1))
    assert torch.allclose(out["normals"][1:], reference["normals"][1:].flip(-1))
    assert torch.allclose(out["depth"], reference["depth"].flip(-1))


def test_missing_and_bad_files_are_named_in_one_sentence(nyuv2: Path) -> None:
    folders = {"depth": "depth", "normals": "normal"}
    (nyuv2 / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(DataError, match=r"1 of 4 train images have no depth file .*depth/2\.npy"):
        MtanLayoutDataset(nyuv2, "train", folders)
    np.save(nyuv2 / "val" / "normal" / "0.npy", np.zeros((H, W), dtype=np.float32))
    dataset = MtanLayoutDataset(nyuv2, "val", {"normals": "normal"})
    with pytest.raises(DataError, match=r"normal/0\.npy' has shape \(24, 32\).*24 x 32 x 3"):
        dataset[0]
    broken = np.ones((H, W, 1), dtype=np.float32)
    broken[3, 3] = np.nan
    np.save(nyuv2 / "val" / "depth" / "1.npy", broken)
    with pytest.raises(DataError, match=r"depth/1\.npy' contains NaN"):
        MtanLayoutDataset(nyuv2, "val", {"depth": "depth"})[1]
    np.save(nyuv2 / "val" / "label" / "1.npy", np.full((H, W), 20.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"label/1\.npy' has label ids outside -1\.\.12"):
        MtanLayoutDataset(nyuv2, "val", {"segmentation": "label"}, num_classes=13)[1]
    with pytest.raises(DataError, match="is not a folder"):
        MtanLayoutDataset(nyuv2 / "nope", "train", folders)


def test_cityscapes_label_sets_and_task_info(tmp_path: Path) -> None:
    root = fabricate_mtan(tmp_path / "cs", {"train": 2, "val": 1},
                          {"label_7": (), "label_19": (), "depth": ()}, classes=7)
    seven = CityscapesDataModule(root=str(root), num_workers=0, image_size=32)
    nineteen = CityscapesDataModule(root=str(root), label_set=19, num_workers=0, image_size=32)
    assert seven.task_info["segmentation"]["num_classes"] == 7
    assert nineteen.task_info["segmentation"]["num_classes"] == 19
    assert seven.task_info["depth"] == {}
    seven.setup("fit")
    batch = next(iter(seven.train_dataloader()))
    assert batch["targets"]["depth"].shape[1:] == (1, 32, 32)
    with pytest.raises(ValueError, match="label_set must be 7 or 19"):
        CityscapesDataModule(root=str(root), label_set=8)


def test_nyuv2_data_module_batches_every_task(nyuv2: Path) -> None:
    data = NYUv2DataModule(root=str(nyuv2), image_size=32, batch_size=2, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["targets"]["segmentation"].shape == (2, 32, 32)
    assert batch["targets"]["normals"].shape == (2, 3, 32, 32)
    assert bool(batch["has"]["depth"].all())


@pytest.mark.slow
def test_nyuv2_trains_and_validates_every_task_through_the_cli(nyuv2: Path,
                                                                tmp_path: Path) -> None:
    main(["fit", "--config", str(REPO / "configs" / "smoke.yaml"),
          "--data", str(REPO / "configs" / "data" / "nyuv2.yaml"),
          "--data.init_args.root", str(nyuv2), "--data.init_args.image_size", "32",
          "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
          "--model.tasks", "{segmentation: {decoder_channels: 16}, depth: {decoder_channels: 16},"
          " normals: {decoder_channels: 16}}",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--run_name", "nyu", "--test_after_fit", "false"])
    metrics = json.loads((tmp_path / "runs" / "nyu" / "metrics.json").read_text())
    for key in ("val/segmentation/miou", "val/depth/abs_err", "val/depth/delta1",
                "val/normals/mean_angle", "val/normals/within_11_25", "val/mtl/score"):
        assert key in metrics, (key, sorted(metrics))
    assert 0.0 <= metrics["val/depth/delta1"] <= 1.0
