"""Gated mixtures of experts over the backbone maps: MMoE and CGC."""

from __future__ import annotations

import torch
from torch import nn

from mtl_lightning.models.architectures.base import (
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.architectures.hard import HardSharing


def _expert(channels: int) -> nn.Sequential:
    """One expert at one level: a 1x1 conv block (3x3 experts on the deepest maps would
    outweigh the backbone)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class GatedExperts(HardSharing):
    """A shared backbone; at every backbone map, experts whose outputs each task mixes with
    its own input-dependent gate; each task's mixture goes through the shared neck.

    - MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
      Mixture-of-Experts", KDD 2018), ``task_experts: 0``: ``m_t = sum_e g_t(x)_e E_e(x)``
      with ``g_t(x) = softmax(W_t pool(x))`` over the ``experts`` shared experts;
    - CGC, the extraction layer of PLE (Tang et al., "Progressive Layered Extraction",
      RecSys 2020), ``task_experts: k``: each task also has ``k`` experts of its own, and its
      gate mixes the shared experts and its own.

    LibMTL's versions put the experts in place of the encoder (each expert a whole network);
    here they sit on the maps of one shared backbone, so the cost stays near hard sharing and
    every task's head works unchanged. The representation is the backbone maps.

    Args:
        experts: shared experts per backbone map.
        task_experts: each task's own experts per map (0: MMoE; more: CGC).
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 experts: int = 4, task_experts: int = 0) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        if experts < 1 or task_experts < 0:
            raise ValueError(f"model.architecture_options: experts ({experts}) must be >= 1 and "
                             f"task_experts ({task_experts}) >= 0.")
        last = len(self.channels) - 1
        #: the maps each task mixes: all for a task that reads the pyramid (the neck reads every
        #: map), the deepest for one that reads the backbone's last map only (classification,
        #: an ASPP decoder), so that no gate goes unused
        self.mixed = {task: list(range(last + 1)) if task in self.pyramid_tasks else [last]
                      for task in tasks}
        used = sorted({level for levels in self.mixed.values() for level in levels})
        self.experts = nn.ModuleDict({
            str(j): nn.ModuleList(_expert(self.channels[j]) for _ in range(experts))
            for j in used})
        self.task_experts = nn.ModuleDict({
            task: nn.ModuleDict({str(j): nn.ModuleList(_expert(self.channels[j])
                                                       for _ in range(task_experts))
                                 for j in self.mixed[task]})
            for task in tasks} if task_experts else {})
        self.gates = nn.ModuleDict({
            task: nn.ModuleDict({str(j): nn.Linear(self.channels[j], experts + task_experts)
                                 for j in self.mixed[task]})
            for task in tasks})

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        representation, maps = self.shared_maps(self.backbone, image)
        mixed = {task: list(maps) for task in self.task_names}
        for level, experts in self.experts.items():
            shared = maps[int(level)]
            outputs = [expert(shared) for expert in experts]
            pooled = shared.float().mean(dim=(2, 3))
            for task in self.task_names:
                if level not in self.gates[task]:
                    continue
                own = self.task_experts[task][level] if task in self.task_experts else []
                stacked = torch.stack(outputs + [e(shared) for e in own], dim=1)  # B,E,C,H,W
                gate = torch.softmax(self.gates[task][level](pooled), dim=1)
                mixed[task][int(level)] = (gate[:, :, None, None, None].to(stacked.dtype)
                                           * stacked).sum(dim=1)
        features = {task: self.neck(m) if task in self.pyramid_tasks else self.without_pyramid(m)
                    for task, m in mixed.items()}
        return ArchitectureOutput(features, representation)

    def roles(self) -> ParameterRoles:
        roles = super().roles()
        roles.shared += list(self.experts.parameters())
        roles.per_task = {
            task: list(self.gates[task].parameters())
            + (list(self.task_experts[task].parameters()) if task in self.task_experts else [])
            for task in self.task_names}
        return roles
