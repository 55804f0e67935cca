"""Segmentation with ``decoder: aspp`` (DeepLab-v3 on the backbone's last map), the head of
LibMTL's NYUv2 and Cityscapes protocols: it reads no pyramid, and a model whose every dense
task uses it trains every parameter it holds."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.models.neck import Features
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import SegmentationTask


def test_aspp_segmentation_reads_the_last_backbone_map() -> None:
    task = SegmentationTask(5, decoder="aspp", decoder_channels=8, aspp_rates=(1, 2, 3))
    assert task.pyramid_levels == ()
    task.build_head(8, [8, 16], [4, 8])
    maps = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    logits = task(Features(backbone=maps, pyramid=[], strides=[4, 8]), (16, 24))
    assert logits.shape == (2, 5, 16, 24)
    assert SegmentationTask(5).pyramid_levels is None  # fpn, the default, reads them all
    with pytest.raises(ValueError, match=r"segmentation\.decoder must be 'fpn' or 'aspp'"):
        SegmentationTask(5, decoder="unet")


def test_a_dilated_model_with_aspp_heads_trains_every_parameter() -> None:
    model = MultiTaskModule(
        tasks={"segmentation": {"decoder": "aspp", "decoder_channels": 8},
               "depth": {"decoder": "aspp", "decoder_channels": 8}},
        task_info={"segmentation": {"num_classes": 4}, "depth": {}}, backbone="resnet18",
        backbone_kwargs={"output_stride": 8}, neck_channels=8)
    outputs = model(torch.randn(2, 3, 48, 64))
    assert outputs["segmentation"].shape == (2, 4, 48, 64)
    has = torch.tensor([True, True])
    loss = (model.tasks["segmentation"].loss(outputs["segmentation"],
                                             torch.zeros(2, 48, 64, dtype=torch.uint8), has)
            + model.tasks["depth"].loss(outputs["depth"], torch.ones(2, 48, 64), has))
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
