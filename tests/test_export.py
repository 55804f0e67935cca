"""``mtl-lightning export``: the ONNX model run by onnxruntime (and the TorchScript module)
gives the eager PyTorch outputs; a bad checkpoint path is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torchvision.ops import batched_nms

from mtl_lightning.balancing import DynamicWeightAverage
from mtl_lightning.cli import main
from mtl_lightning.data import ScenesDataModule
from mtl_lightning.export import InferenceModel, export, load_module
from mtl_lightning.module import MultiTaskModule

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_scenes: ScenesDataModule) -> Path:
    """Two training steps of a small model with a stateful balancer (DWA), saved by Lightning."""
    torch.manual_seed(0)
    # A score threshold under the heatmap's initial prior (0.01): detections after 2 steps.
    tasks = {"classification": None, "segmentation": None,
             "detection": {"score_threshold": 0.002}}
    model = MultiTaskModule(
        tasks=tasks, task_info=tiny_scenes.task_info, neck_channels=16,
        balancer=DynamicWeightAverage(),
        backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16},
    )
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path_factory.mktemp("fit"))
    trainer.fit(model, datamodule=tiny_scenes)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _onnx_outputs(path: Path, image: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": image.numpy()})))


def _images(tiny_scenes: ScenesDataModule, count: int) -> torch.Tensor:
    return next(iter(tiny_scenes.val_dataloader()))["image"][:count]


def test_raw_outputs_match_eager(checkpoint: Path, tiny_scenes, tmp_path: Path, capsys) -> None:
    onnx_file, script_file = tmp_path / "raw.onnx", tmp_path / "raw.pt"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint), "--output", str(onnx_file),
              "--postprocess", "false", "--image_size", "64", "--torchscript", str(script_file)])
    assert exit_info.value.code == 0
    assert "outputs: classification, segmentation, detection_heatmap, detection_box" in (
        capsys.readouterr().out)
    image = _images(tiny_scenes, 3)  # exported with batch 2: the batch axis is dynamic
    module = load_module(checkpoint)
    with torch.no_grad():
        eager = module(image)
    expected = {"classification": eager["classification"],
                "segmentation": eager["segmentation"],
                "detection_heatmap": eager["detection"]["heatmap"],
                "detection_box": eager["detection"]["box"]}
    onnx = _onnx_outputs(onnx_file, image)
    assert list(onnx) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(onnx[name], value.numpy(), atol=ATOL, err_msg=name)
    scripted = torch.jit.load(str(script_file))
    with torch.no_grad():
        for got, value in zip(scripted(image), expected.values()):
            torch.testing.assert_close(got, value, atol=ATOL, rtol=0)


def test_postprocessed_outputs_match_python_postprocess(
    checkpoint: Path, tiny_scenes, tmp_path: Path
) -> None:
    onnx_file = tmp_path / "model.onnx"
    names = export(checkpoint, onnx_file, image_size=64)
    assert names == ["classification_scores", "classification_labels", "segmentation_labels",
                     "detection_boxes", "detection_scores", "detection_labels"]
    image = _images(tiny_scenes, 2)
    module = load_module(checkpoint)
    onnx = _onnx_outputs(onnx_file, image)
    with torch.no_grad():
        eager = InferenceModel(module).named_outputs(image)
        python = module.predict_tasks(image)
    # Candidates that are not heatmap peaks score 0 and tie: top-k orders them arbitrarily.
    peaks = eager["detection_scores"].numpy() > 0
    for name, value in eager.items():
        got, want = onnx[name], value.numpy()
        if name in ("detection_boxes", "detection_labels"):
            got, want = got[peaks], want[peaks]
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=name)
    detection = module.tasks["detection"]
    for i, predicted in enumerate(python):
        assert int(onnx["classification_labels"][i]) == int(predicted["classification"]["labels"])
        agree = (onnx["segmentation_labels"][i] == predicted["segmentation"].numpy()).mean()
        assert agree > 0.999  # argmax of near-equal logits may differ in a pixel or two
        # The detections of the Python post-processing = threshold + class-wise NMS applied
        # to the exported top-k candidates (what a deployment does after the model).
        boxes = torch.from_numpy(onnx["detection_boxes"][i])
        scores = torch.from_numpy(onnx["detection_scores"][i])
        labels = torch.from_numpy(onnx["detection_labels"][i])
        keep = scores > detection.score_threshold
        kept = batched_nms(boxes[keep], scores[keep], labels[keep], detection.nms_iou)
        kept = kept[: detection.max_detections]
        expected = predicted["detection"]
        assert len(kept) == len(expected["scores"]) > 0
        torch.testing.assert_close(boxes[keep][kept], expected["boxes"], atol=ATOL, rtol=0)
        torch.testing.assert_close(scores[keep][kept], expected["scores"], atol=ATOL, rtol=0)
        assert torch.equal(labels[keep][kept], expected["labels"])


@pytest.mark.parametrize("bad", ["missing.ckpt", "not_a_checkpoint.ckpt"])
def test_bad_checkpoint_is_one_line(bad: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "not_a_checkpoint.ckpt").write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / bad), "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mtl-lightning: error:") and bad in lines[0]
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()


def test_export_reads_the_image_size_from_a_checkpoint_without_a_run_config(
    checkpoint: Path, tiny_scenes, tmp_path: Path
) -> None:
    # The fixture's checkpoint lies alone in its folder: no config.yaml near it. The data
    # module's init arguments travel in the checkpoint instead (save_hyperparameters).
    assert not list(checkpoint.parent.glob("config.yaml"))
    assert not list(checkpoint.parent.parent.glob("config.yaml"))
    saved = torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]
    assert saved["image_size"] == tiny_scenes.image_size == 64  # not DEFAULT_IMAGE_SIZE (128)
    assert saved["root"] == str(tiny_scenes.root)
    onnx_file = tmp_path / "model.onnx"
    export(checkpoint, onnx_file, postprocess=False, exporter="legacy")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 64, 64]
