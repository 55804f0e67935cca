"""``model.compile``: the compiled network computes what the eager one computes, trains, and
keeps the checkpoint keys of the eager model."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.module import MultiTaskModule

TASKS = {"classification": None, "segmentation": {"decoder_channels": 16},
         "detection": {"head_channels": 16}}
INFO = {"classification": {"num_classes": 3}, "segmentation": {"num_classes": 4},
        "detection": {"num_classes": 3}}


def model(compile: bool) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(tasks=TASKS, task_info=INFO, neck_channels=16, compile=compile,
                           backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16})


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_its_keys() -> None:
    eager, compiled = model(False), model(True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    eager.eval()
    compiled.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = eager(image), compiled(image)
    torch.testing.assert_close(actual["classification"], expected["classification"],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual["segmentation"], expected["segmentation"],
                               rtol=1e-4, atol=1e-4)
    for key in ("heatmap", "box"):
        torch.testing.assert_close(actual["detection"][key], expected["detection"][key],
                                   rtol=1e-4, atol=1e-4)
    compiled.train()
    outputs = compiled(image)
    loss = sum(t.float().mean() for t in (outputs["classification"], outputs["segmentation"],
                                          outputs["detection"]["heatmap"]))
    loss.backward()
    grads = [p.grad for p in compiled.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
