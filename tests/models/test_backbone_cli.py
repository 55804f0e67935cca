"""The smoke run with a ViT, a Swin, a ConvNeXt and an EfficientNet: fit (train and validate)
and export through the command line; a ViT checkpoint keeps its normalisation for predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lightning.cli import main, run_cli
from mtl_lightning.export import load_module
from tests.conftest import SMOKE_CONFIG

pytest.importorskip("onnx")

TINY_RUN = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--test_after_fit", "false",
            "--overlays.num_images", "0", "--trainer.enable_progress_bar", "false",
            "--data.init_args.num_train", "32", "--data.init_args.num_val", "16"]


def _fit(tmp_path: Path, scenes_root: Path, *extra: str) -> Path:
    """``mtl-lightning fit`` on the smoke config; the run's last checkpoint."""
    root = tmp_path / "runs"
    main(["fit", "--config", str(SMOKE_CONFIG), "--trainer.default_root_dir", str(root),
          "--data.init_args.root", str(scenes_root), *TINY_RUN, *extra])
    (checkpoint,) = root.glob("*/checkpoints/last.ckpt")
    metrics = json.loads((checkpoint.parents[1] / "metrics.json").read_text())
    assert 0.0 <= metrics["val/mtl/score"] <= 1.0  # validated
    return checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
                                      "convnext_atto", "efficientnet_b0"])
def test_smoke_fit_and_export(backbone: str, tmp_path: Path, scenes_root: Path) -> None:
    """(The TorchScript-based exporter is the quicker one to run; the torch.export-based one
    is run on a ViT below.)"""
    # The model built for the data's size: a ViT's position embeddings are resampled once,
    # when the weights load, not in every forward (which the TorchScript exporter cannot do).
    checkpoint = _fit(tmp_path, scenes_root, "--model.backbone", backbone,
                      "--model.image_size", "64")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["backbone"] == backbone
    onnx_file = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint), "--output", str(onnx_file),
              "--exporter", "legacy"])
    assert exit_info.value.code == 0
    assert onnx_file.stat().st_size > 100_000


@pytest.mark.slow
def test_a_vit_checkpoint_records_its_normalisation_and_predict_and_export_use_it(
        tmp_path: Path, scenes_root: Path, tiny_batch) -> None:
    mean, std = [0.2, 0.3, 0.4], [0.25, 0.3, 0.35]
    vit = ["--model.backbone", "vit_tiny_patch16_224",
           "--model.backbone_kwargs", '{"depth": 2}']
    checkpoint = _fit(tmp_path, scenes_root, *vit, "--model.image_mean", json.dumps(mean),
                      "--model.image_std", json.dumps(std))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["image_mean"] == pytest.approx(mean)
    assert saved["state_dict"]["normalize.std"].flatten().tolist() == pytest.approx(std)

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 48), (10, 200, 10)).save(images / "photo.png")
    out = tmp_path / "predictions"
    # The predict command is given no statistics (its config would give timm's 0.5 / 0.5):
    # the checkpoint's are the ones used.
    cli = run_cli(["predict", "--config", str(SMOKE_CONFIG), *vit,
                   "--trainer.default_root_dir", str(tmp_path / "predict"),
                   "--data.init_args.root", str(scenes_root),
                   "--trainer.enable_progress_bar", "false", "--ckpt_path", str(checkpoint),
                   "--data.init_args.predict_images", str(images),
                   "--prediction_writer.output_dir", str(out)])
    assert cli.model.normalize.mean.flatten().tolist() == pytest.approx(mean)
    assert cli.model.normalize.std.flatten().tolist() == pytest.approx(std)
    record = json.loads((out / "photo.png.json").read_text())
    assert record["size_hw"] == [48, 80] and "segmentation" in record

    # The exported graph takes [0, 1] images and normalises them as training did.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_file = tmp_path / "vit.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint), "--output", str(onnx_file),
              "--postprocess", "false"])
    assert exit_info.value.code == 0
    image = tiny_batch["image"][:2]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits, *_) = session.run(None, {"image": image.numpy()})
    module = load_module(checkpoint)
    with torch.no_grad():
        expected = module(image)["classification"]
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
