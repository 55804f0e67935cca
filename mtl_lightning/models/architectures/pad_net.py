"""PAD-Net: prediction-and-distillation network (Xu, Ouyang, Wang & Sebe, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import nn

from mtl_lightning.models.architectures.distillation import task_features
from mtl_lightning.models.architectures.task_interaction import TaskInteractionDecoder
from mtl_lightning.models.neck import Features


class PADNet(TaskInteractionDecoder):
    """Shared backbone and neck -> per-task features and initial predictions -> multi-modal
    distillation -> each task's head (the final prediction).

    Xu et al., "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation Network for
    Simultaneous Depth Estimation and Scene Parsing", CVPR 2018. For every dense task ``t``
    (see :mod:`~mtl_lightning.models.architectures.distillation`):

    1. ``F_t = B_t(P)``: task features from the shared pyramid ``P``, per level (two conv
       blocks per task and level);
    2. the initial prediction ``head'_t(F_t)`` (a copy of the task's head), supervised with
       the task's loss times ``deep_supervision_weight``;
    3. ``F_t^o = F_t + sum_{s != t} sigmoid(W_g F_s) . (W_m F_s)``, level by level;
    4. the task's own head reads ``F_t^o`` (the final prediction).

    PAD-Net distils one scale of a dilated backbone; here each pyramid level is distilled on
    its own, so the task heads keep reading a pyramid. Classification and detection read the
    shared neck's features unchanged.

    Args:
        deep_supervision_weight: weight of each initial prediction's loss (1: the paper's
            choice of equal weights for the intermediate and final losses).
    """

    def build_task_features(self, width: int, count: int) -> None:
        """Two conv blocks per task and level it reads."""
        self.branches = nn.ModuleDict({
            name: nn.ModuleDict({str(j): task_features(width) for j in levels})
            for name, levels in self.levels.items()})

    def initial_features(self, shared: Features) -> dict[str, list[torch.Tensor]]:
        """``F_t = B_t(P)`` at the levels task ``t`` reads; the shared maps elsewhere."""
        own = {name: list(shared.pyramid) for name in self.levels}
        for name, branches in self.branches.items():
            for level, branch in branches.items():
                own[name][int(level)] = branch(shared.pyramid[int(level)])
        return own

    def task_feature_parameters(self) -> list[nn.Parameter]:
        return list(self.branches.parameters())
