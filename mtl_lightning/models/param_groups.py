"""Optimiser parameter groups: the backbone's learning rate apart from the heads', and
layer-wise learning-rate decay inside it.

Layer-wise decay (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT) gives the backbone's
layer ``i`` of ``L`` the learning rate ``lr * decay ** (L - 1 - i)``: pretrained early layers
change least. The layers are those of timm's ``group_matcher`` (blocks of a ViT, stages of a
Swin or ConvNeXt), through timm's ``param_groups_layer_decay``. Each group carries an
``lr_scale`` that timm's schedulers apply on every update; ``backbone_lr_ratio`` multiplies
it for every backbone parameter. Everything that is not a timm backbone (a plain ViT's simple
feature pyramid, the neck, the heads, cross-stitch and attention units) learns at ``lr``.
Weight decay skips biases, norms and the model's own ``no_weight_decay()`` (position
embeddings, class tokens), as timm's factory does.
"""

from __future__ import annotations

from typing import Any

from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from mtl_lightning.models.backbone import Backbone


def _no_decay_names(model: nn.Module) -> set[str]:
    names = getattr(model, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def optimizer_param_groups(model: nn.Module, weight_decay: float,
                           layer_decay: float | None = None,
                           backbone_lr_ratio: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups of ``model`` for timm's ``create_optimizer_v2``."""
    groups: list[dict[str, Any]] = []
    in_backbone: set[int] = set()
    backbones = [m.timm_model for m in model.modules() if isinstance(m, Backbone)]
    for network in backbones:
        skip = _no_decay_names(network)
        if layer_decay is None:
            found = param_groups_weight_decay(network, weight_decay=weight_decay,
                                              no_weight_decay_list=skip)
        else:
            found = param_groups_layer_decay(network, weight_decay=weight_decay,
                                             no_weight_decay_list=skip, layer_decay=layer_decay)
        for group in found:
            group["lr_scale"] = group.get("lr_scale", 1.0) * backbone_lr_ratio
            in_backbone |= {id(p) for p in group["params"]}
        groups += [g for g in found if g["params"]]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in in_backbone:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups += [{"params": no_decay, "weight_decay": 0.0},
               {"params": decay, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]
