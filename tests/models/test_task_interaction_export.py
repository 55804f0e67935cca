"""PAD-Net and MTI-Net export to ONNX (``mtl_lightning.export``) and onnxruntime gives the
eager outputs: the distilled decoders (per-level task branches, attention messages, MTI-Net's
feature propagation with its squeeze-and-excitation) trace, with a dynamic batch axis, and the
deep-supervision heads, used only in training, stay out of the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from mtl_lightning.data import ScenesDataModule
from mtl_lightning.export import InferenceModel, export, load_module
from mtl_lightning.module import MultiTaskModule

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4
#: Two dense tasks (segmentation, edges), so that distillation exchanges messages.
TASKS = {"classification": None, "segmentation": None, "detection": None, "edges": None}


def _checkpoint(architecture: str, data: ScenesDataModule, root: Path) -> Path:
    """One training step of a small model with ``architecture``, saved by Lightning."""
    torch.manual_seed(0)
    model = MultiTaskModule(tasks=TASKS, task_info=data.task_info, neck_channels=16,
                            backbone_kwargs={"channels": [16, 16, 32, 32], "stem_width": 16},
                            architecture=architecture)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=root)
    trainer.fit(model, datamodule=data)
    path = root / f"{architecture}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["pad_net", "mti_net"])
def test_onnx_export_gives_the_eager_outputs(architecture: str, tiny_scenes: ScenesDataModule,
                                             tmp_path: Path) -> None:
    checkpoint = _checkpoint(architecture, tiny_scenes, tmp_path)
    onnx_file = tmp_path / f"{architecture}.onnx"
    names = export(checkpoint, onnx_file, postprocess=False, image_size=64)
    assert names == ["classification", "segmentation", "detection_heatmap", "detection_box",
                     "edges"]
    module = load_module(checkpoint)
    assert type(module.architecture).__name__ == {"pad_net": "PADNet",
                                                  "mti_net": "MTINet"}[architecture]
    assert set(module.architecture.levels) == {"segmentation", "edges"}
    image = next(iter(tiny_scenes.val_dataloader()))["image"][:3]  # exported with batch 2
    with torch.no_grad():
        expected = InferenceModel(module, postprocess=False).named_outputs(image)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"image": image.numpy()})))
    assert list(got) == names
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=ATOL, err_msg=name)
