"""The backbone's learning rate apart from the heads' and layer-wise decay inside it, as timm's
scheduler applies them to the optimiser."""

from __future__ import annotations

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from mtl_lightning.models.param_groups import optimizer_param_groups
from mtl_lightning.module import MultiTaskModule

INFO = {"classification": {"num_classes": 3}, "segmentation": {"num_classes": 4}}
VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 4}}


def _lr_of(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """Learning rate of every parameter, by id."""
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def _optimizer(model: MultiTaskModule, lr: float = 1.0) -> torch.optim.Optimizer:
    """The module's optimiser and timm scheduler at a step past the warm-up (lr = peak)."""
    hp = model.hparams
    groups = optimizer_param_groups(model, hp.weight_decay, hp.layer_decay,
                                    hp.backbone_lr_ratio)
    optimizer = create_optimizer_v2(groups, opt="adamw", lr=lr, weight_decay=hp.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=10**9, t_in_epochs=False)
    scheduler.step_update(num_updates=1)
    return optimizer


def test_backbone_lr_ratio_scales_the_backbone_only() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=8, backbone="resnet10t",
                            backbone_lr_ratio=0.1)
    lrs = _lr_of(_optimizer(model))
    backbone = {id(p) for p in model.backbone.parameters()}
    assert all(lrs[i] == pytest.approx(0.1) for i in backbone)
    rest = [lrs[id(p)] for p in model.parameters() if id(p) not in backbone]
    assert rest and all(lr == pytest.approx(1.0) for lr in rest)
    assert len(lrs) == sum(1 for _ in model.parameters())  # every parameter, once


def test_layer_decay_orders_a_vits_blocks_and_leaves_the_pyramid_and_heads_alone() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=8, layer_decay=0.5,
                            backbone_lr_ratio=0.5, **VIT)
    lrs = _lr_of(_optimizer(model))
    vit = model.backbone.body.model
    block = [lrs[id(vit.blocks[i].attn.qkv.weight)] for i in range(4)]
    # timm's group_matcher: stem (patch and position embeddings) 0, blocks 1..4; the last
    # block learns at the backbone's rate, each earlier one at half the next.
    assert block == pytest.approx([0.5 * 0.5 ** (3 - i) for i in range(4)])
    assert lrs[id(vit.pos_embed)] == pytest.approx(0.5 * 0.5 ** 4)
    for parameter in model.backbone.adapter_parameters() + list(model.neck.parameters()):
        assert lrs[id(parameter)] == pytest.approx(1.0)


def test_no_weight_decay_on_a_vits_position_embedding_and_on_biases() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=8, **VIT)
    groups = optimizer_param_groups(model, 0.05)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    vit = model.backbone.body.model
    assert decay[id(vit.pos_embed)] == 0.0 and decay[id(vit.cls_token)] == 0.0
    assert decay[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    assert decay[id(vit.blocks[0].attn.qkv.bias)] == 0.0
    head = model.tasks["segmentation"]
    weights = [p for p in head.parameters() if p.ndim > 1]
    assert weights and all(decay[id(p)] == 0.05 for p in weights)


def test_bad_rates_are_one_sentence() -> None:
    with pytest.raises(ValueError, match="backbone_lr_ratio"):
        MultiTaskModule(task_info=INFO, neck_channels=8, backbone="resnet10t",
                        backbone_lr_ratio=0.0)
    with pytest.raises(ValueError, match="layer_decay"):
        MultiTaskModule(task_info=INFO, neck_channels=8, backbone="resnet10t", layer_decay=1.5)
