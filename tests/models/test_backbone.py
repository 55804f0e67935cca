"""The timm backbone wrapper: several families, pretrained weights from a file, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from mtl_lightning.models.backbone import Backbone, BackboneError
from mtl_lightning.module import MultiTaskModule

TASK_INFO = {
    "classification": {"num_classes": 3},
    "segmentation": {"num_classes": 4},
    "detection": {"num_classes": 3},
}


@pytest.mark.parametrize(
    "name", ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002"]
)
def test_head_output_shapes_for_several_backbone_families(name: str) -> None:
    model = MultiTaskModule(task_info=TASK_INFO, backbone=name, neck_channels=16).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 96))
    assert outputs["classification"].shape == (2, 3)
    assert outputs["segmentation"].shape == (2, 4, 64, 96)
    assert outputs["detection"]["heatmap"].shape == (2, 3, 16, 24)
    assert outputs["detection"]["box"].shape == (2, 4, 16, 24)
    # Everything is sized from feature_info: the neck consumes exactly what timm reports.
    assert model.neck.in_channels == model.backbone.body.feature_info.channels()
    assert model.backbone.reductions[0] == 4


def test_unknown_backbone_names_close_matches() -> None:
    with pytest.raises(BackboneError, match="resnet18"):
        Backbone("resnet_18")


def test_backbone_without_features_only_support_is_a_clear_error() -> None:
    @timm.models.register_model
    def mtl_test_no_features(pretrained: bool = False, **kwargs: object) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(4))

    with pytest.raises(BackboneError, match="does not support features_only"):
        Backbone("mtl_test_no_features")


def test_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    """Weights written by the test load through timm's pretrained_cfg_overlay=dict(file=...)."""
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.uniform_(-0.1, 0.1)
    weights = tmp_path / "resnet18_weights.pth"
    torch.save(source.state_dict(), weights)

    backbone = Backbone("resnet18", pretrained_file=str(weights))
    loaded = backbone.body.state_dict()
    expected = source.state_dict()
    assert torch.equal(loaded["conv1.weight"], expected["conv1.weight"])
    assert torch.equal(loaded["layer4.1.conv2.weight"], expected["layer4.1.conv2.weight"])
    fresh = Backbone("resnet18")
    assert not torch.equal(fresh.body.state_dict()["conv1.weight"], expected["conv1.weight"])


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="does not exist"):
        Backbone("resnet18", pretrained_file=str(tmp_path / "missing.pth"))
